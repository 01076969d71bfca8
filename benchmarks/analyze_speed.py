"""Wall time and peak memory of `emgroup analyze` (the whole command: load, encode, cluster, class averages,
denoise, figures, files) with a briefly trained spatial-VAE, on 2 CPU threads.

Target: 10,000 particles of 64 x 64 px in under a minute. The spatial-VAE is trained for one epoch on 500
separately simulated particles (same box and pixel size): speed does not depend on how well it is trained.
Prints a table and writes benchmarks/results/analyze_speed.json.

    python benchmarks/analyze_speed.py [-n 10000] [--box 64] [--threads 2] [--hidden 500 128] [--device cuda]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, write_results

OUTPUT = RESULTS / "analyze_speed.json"


def emgroup(*args, env) -> tuple[float, float]:
    """Run one `emgroup` command; (wall seconds, peak resident memory in MB) of that process alone."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "emgroup", *map(str, args)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"emgroup {' '.join(map(str, args))} failed: {process.stderr.read().decode()}")
    return seconds, usage.ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=10000, help="particles analyzed")
    parser.add_argument("--box", type=int, default=64, help="box size, px")
    parser.add_argument("--apix", type=float, default=1.5, help="pixel size, Å/px")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads allowed (torch/OMP/MKL/OpenBLAS)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[500, 128],
                        help="spatial-VAE hidden widths timed with --no-denoise (500: the paper's; 256: our default)")
    parser.add_argument("--denoise-hidden", type=int, nargs="*", default=[128],
                        help="hidden widths also timed with --denoise (the generator on every pixel of every "
                             "particle: about N * D^2 * hidden^2 multiply-adds)")
    parser.add_argument("--device", default="cpu", help="torch device for training and analysis")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="JSON results file")
    args = parser.parse_args()
    env = {**os.environ, **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                          "OPENBLAS_NUM_THREADS")}}
    sim = ["--box", args.box, "--apix", args.apix, "--shift-sigma", 2, "--snr", 0.1, "--no-progress"]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        emgroup("simulate", "-o", work / "train", "-n", 500, "--seed", 1, *sim, env=env)
        emgroup("simulate", "-o", work / "data", "-n", args.n, "--seed", 2, *sim, env=env)
        for hidden in sorted(set(args.hidden) | set(args.denoise_hidden), reverse=True):
            run = work / f"run{hidden}"
            emgroup("train", work / "train/particles.star", "-o", run, "--model", "spatial", "--epochs", 1,
                    "--hidden", hidden, "--device", args.device, "--no-progress", env=env)
            for denoise in ["--no-denoise"] * (hidden in args.hidden) + ["--denoise"] * (hidden in args.denoise_hidden):
                seconds, memory = emgroup("analyze", run, work / "data/particles.star", "-o", work / "out",
                                          "--clusters", "auto", denoise, "--device", args.device, "--no-progress",
                                          env=env)
                name = f"spatial-VAE, hidden {hidden}, {denoise.removeprefix('--')}"
                rows.append({"configuration": name, "particles": args.n, "box": args.box,
                             "seconds": round(seconds, 1), "particles_per_second": round(args.n / seconds),
                             "peak_memory_mb": round(memory)})
                print(f"{name:<44} {seconds:7.1f} s {args.n / seconds:7.0f} particles/s {memory:7.0f} MB", flush=True)
    result = {"benchmark": "emgroup analyze wall time and peak memory (whole command, all outputs written; "
                           "--clusters auto: GMM, BIC over K = 2..10)",
              "threads": args.threads, "device": args.device, "load_average_1min_at_end": round(os.getloadavg()[0], 1),
              "stack_mb": round(args.n * args.box**2 * 4 / 2**20),
              "target": f"{args.n} particles of {args.box}x{args.box} px in under 60 s on 2 cores", "runs": rows}
    write_results(args.output, result)
    print(f"\n{'configuration':<44} {'seconds':>8} {'particles/s':>12} {'peak MB':>8}")
    for row in rows:
        print(f"{row['configuration']:<44} {row['seconds']:8.1f} {row['particles_per_second']:12d} "
              f"{row['peak_memory_mb']:8d}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
