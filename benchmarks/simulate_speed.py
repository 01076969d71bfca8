"""Wall time of `emgroup simulate` (the whole command: density, projections, CTF, noise, writing) on 2 CPU threads.

Target: 10,000 particles of 64 x 64 px in under a minute. Prints a table and writes
benchmarks/results/simulate_speed.json.

    python benchmarks/simulate_speed.py [-n 10000] [--box 64] [--threads 2]
"""

import argparse
import importlib.resources
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, SHARED_DATA, write_results

OUTPUT = RESULTS / "simulate_speed.json"


def configurations(open_pdb: Path) -> dict[str, list[str]]:
    """Named option sets, from the cheapest to the most realistic."""
    configs = {
        "in-plane, no CTF, no noise": ["--views", "inplane", "--no-ctf", "--snr", "inf"],
        "in-plane, 20 conformations, CTF, noise": ["--views", "inplane", "--pdb2", str(open_pdb),
                                                   "--shift-sigma", "2", "--snr", "0.1"],
        "random 3-D, 20 conformations, CTF, noise": ["--views", "random3d", "--pdb2", str(open_pdb),
                                                     "--shift-sigma", "2", "--astigmatism", "500", "--snr", "0.1"],
    }
    if (SHARED_DATA / "adk_dims.npz").is_file():
        configs["random 3-D, 20 frames of the trajectory, CTF, noise"] = [
            "--views", "random3d", "--trajectory", str(SHARED_DATA / "adk_dims.npz"), "--shift-sigma", "2",
            "--snr", "0.1"]
    return configs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=10000, help="particles per run")
    parser.add_argument("--box", type=int, default=64, help="box size, px")
    parser.add_argument("--apix", type=float, default=1.5, help="pixel size, Å/px")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads allowed (OMP/MKL/OpenBLAS)")
    args = parser.parse_args()
    env = {**os.environ, **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                          "OPENBLAS_NUM_THREADS")}}
    with importlib.resources.as_file(importlib.resources.files("emgroup.demo_data") / "adk_open.pdb") as open_pdb:
        rows = []
        for name, options in configurations(open_pdb).items():
            with tempfile.TemporaryDirectory() as outdir:
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "emgroup", "simulate", "-o", outdir, "-n", str(args.n),
                                "--box", str(args.box), "--apix", str(args.apix), "--no-progress", *options],
                               check=True, env=env, capture_output=True)
                seconds = time.perf_counter() - start
            shown = [Path(o).name if os.path.isabs(o) else o for o in options]  # no machine paths in the JSON
            rows.append({"configuration": name, "options": shown, "particles": args.n, "box": args.box,
                         "seconds": round(seconds, 2), "particles_per_second": round(args.n / seconds)})
            print(f"{name:<66} {seconds:7.1f} s {args.n / seconds:8.0f} particles/s", flush=True)
    result = {"benchmark": "emgroup simulate wall time (whole command, files written)", "threads": args.threads,
              "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),  # largest run
              "target": f"{args.n} particles of {args.box}x{args.box} px in under 60 s on 2 cores", "runs": rows}
    write_results(OUTPUT, result)
    print(f"\n{'configuration':<66} {'seconds':>9} {'particles/s':>13}")
    for row in rows:
        print(f"{row['configuration']:<66} {row['seconds']:9.1f} {row['particles_per_second']:13d}")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
