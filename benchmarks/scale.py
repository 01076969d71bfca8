"""Stack size against time and memory, end to end through the CLI: simulate -> preprocess -> train -> analyze.

For each number of particles N, in a fresh folder: `emgroup simulate` (adenylate kinase, CTF, SNR 0.1, in-plane
rotations, shifts of 2 px) of N particles of BOX x BOX, `emgroup preprocess` of its STAR, one epoch of
`emgroup train --model vae`, a fixed number of TARGET-VAE steps (`--model target --epoch-size`: the same number of
particles whatever N and 100 held out, so its time should not grow with N), and `emgroup analyze` of the VAE run (2 clusters,
class averages, denoised particles, report).

Each stage is one `emgroup` process timed by wall clock; its peak *anonymous* memory (RssAnon of the process and its
children, sampled every 0.05 s from /proc) is what the stage holds itself: the memory-mapped stacks' pages, which the
kernel drops under pressure, are not counted. A stage that streams the stack keeps it flat in N; its time should
grow linearly. The table gives both per N, and the last lines the fitted growth (time per particle; memory from the
smallest to the largest N).

    python benchmarks/scale.py [--sizes 10000 20000 40000 80000 160000] [--box 100] [--threads 2]
    python benchmarks/scale.py --quick   # 1,000 / 2,000 / 4,000 particles of 64 px: a pipeline check

Writes benchmarks/results/scale[_quick].json. Disk: about 3 x 4 N BOX^2 bytes per N (the simulated, clean and
preprocessed stacks, and the denoised one): 19 GB at 160,000 x 100^2.
"""

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import numpy as np

from common import REPO, RESULTS, print_table, write_results

STAGES = ("simulate", "preprocess", "train vae", "train target", "analyze")
#: particles of the TARGET-VAE epoch and of its validation pass, and its batch size: a fixed number of steps
#: whatever N
TARGET_PARTICLES, TARGET_VAL, TARGET_BATCH = 200, 100, 50
#: held-out fraction of the VAE run: 1% (1,600 particles at 160,000)
VAL_FRACTION = 0.01


def anonymous_kib(pid: int) -> int:
    """RssAnon (KiB) of process ``pid`` and all its descendants, 0 for those already gone."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon:")), 0)
        todo += map(int, children)
    return total


def run_stage(args: list, threads: int) -> dict:
    """``emgroup ARGS`` in a child process: wall ``seconds`` and ``peak_anon_mib``; stops with its output if it fails."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "emgroup", *map(str, args)]
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    output = []
    reader = threading.Thread(target=lambda: output.extend(child.stdout))
    reader.start()
    while child.poll() is None:
        peak = max(peak, anonymous_kib(child.pid))
        time.sleep(0.05)
    reader.join()
    if child.returncode:
        sys.exit(f"failed ({child.returncode}): {' '.join(command)}\n{''.join(output)[-4000:]}")
    return {"seconds": time.perf_counter() - start, "peak_anon_mib": peak / 1024}


def pipeline(n: int, box: int, folder: Path, threads: int, seed: int) -> dict:
    """The five stages on ``n`` particles of ``box`` px in ``folder`` (replaced): stage -> measurements."""
    shutil.rmtree(folder, ignore_errors=True)
    sim, pre = folder / "simulated", folder / "preprocessed"
    common = ["--seed", seed, "--no-progress"]
    train = ["--epochs", 1, "--force", *common]
    commands = {
        "simulate": ["simulate", "-o", sim, "-n", n, "--box", box, "--apix", 2.5 * 40 / box, "--snr", 0.1,
                     "--shift-sigma", 2, *common],
        "preprocess": ["preprocess", sim / "particles.star", "-o", pre, "--no-progress"],
        "train vae": ["train", pre / "particles.star", "-o", folder / "vae", "--model", "vae", "--batch-size", 256,
                      "--val-fraction", VAL_FRACTION, *train],
        "train target": ["train", pre / "particles.star", "-o", folder / "target", "--model", "target", "--ctf",
                         "--z-dim", 1, "--batch-size", TARGET_BATCH,
                         "--epoch-size", TARGET_PARTICLES, "--val-fraction", TARGET_VAL / n, *train],
        "analyze": ["analyze", folder / "vae", pre / "particles.star", "-o", folder / "analysis", "--clusters", 2,
                    *common],
    }
    stages = {}
    for stage, args in commands.items():
        stages[stage] = run_stage(args, threads)
        print(f"  {n:>7} {stage:13} {stages[stage]['seconds']:8.1f} s  {stages[stage]['peak_anon_mib']:7.0f} MiB",
              flush=True)
    stages["disk_gib"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**30
    shutil.rmtree(folder)
    return stages


def growth(rows: list[dict], stage: str) -> dict:
    """Fitted seconds per 1,000 particles and intercept (least squares over N), and the peak memory's ratio from the
    smallest N to the largest."""
    n = np.array([row["n"] for row in rows], float)
    seconds = np.array([row[stage]["seconds"] for row in rows])
    slope, intercept = np.polyfit(n, seconds, 1)
    residual = np.abs(seconds - (slope * n + intercept)).max() / seconds.max()
    memory = [row[stage]["peak_anon_mib"] for row in rows]
    return {"seconds_per_1000": slope * 1000, "intercept_seconds": intercept, "max_fit_residual": residual,
            "memory_ratio": memory[-1] / memory[0]}


@click.command()
@click.option("--sizes", default="10000,20000,40000,80000,160000", show_default=True,
              help="Comma-separated numbers of particles.")
@click.option("--box", default=100, show_default=True, help="Box size, px.")
@click.option("--quick", is_flag=True, help="1,000, 2,000 and 4,000 particles of 64 px (overrides --sizes, --box).")
@click.option("--threads", default=2, show_default=True, help="CPU threads of every stage.")
@click.option("--seed", default=0, show_default=True, help="Seed of the simulation and of training.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), show_default=True,
              default=REPO / "runs" / "benchmarks" / "scale", help="Folder for the stacks (removed after each N).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON path [default: benchmarks/results/scale[_quick].json].")
def main(sizes, box, quick, threads, seed, workdir, output):
    sizes = [1000, 2000, 4000] if quick else [int(size) for size in sizes.split(",")]
    box = 64 if quick else box
    rows = []
    for n in sizes:
        rows.append({"n": n, **pipeline(n, box, workdir / str(n), threads, seed)})
    table = [{"N": row["n"], **{f"{stage} s": row[stage]["seconds"] for stage in STAGES},
              **{f"{stage} MiB": row[stage]["peak_anon_mib"] for stage in STAGES}, "disk GiB": row["disk_gib"]}
             for row in rows]
    print_table(table, list(table[0]))
    fits = {stage: growth(rows, stage) for stage in STAGES} if len(rows) > 1 else {}
    for stage, fit in fits.items():
        print(f"{stage:13} {fit['seconds_per_1000']:7.2f} s per 1,000 particles + {fit['intercept_seconds']:6.1f} s "
              f"(fit within {fit['max_fit_residual']:.0%});  peak memory x{fit['memory_ratio']:.2f} from "
              f"{sizes[0]:,} to {sizes[-1]:,}")
    output = output or RESULTS / f"scale{'_quick' if quick else ''}.json"
    write_results(output, {"benchmark": "time and peak anonymous memory of each CLI stage against the number of "
                                        "particles", "box": box, "threads": threads, "seed": seed,
                           "target_particles_per_run": TARGET_PARTICLES, "target_val_particles": TARGET_VAL,
                           "target_batch": TARGET_BATCH,
                           "val_fraction": VAL_FRACTION, "rows": rows, "fits": fits})
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
