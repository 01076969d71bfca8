"""Helpers shared by the accuracy benchmarks: run the `emgroup` CLI, read what `analyze` wrote, report results.

Every training and analysis goes through the command line (a subprocess), exactly as a user would run it.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import h5py
import numpy as np

from emgroup.io.atomic import atomic_path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"


def cli_options(options: dict) -> list[str]:
    """``{"z_dim": 2, "rotation": False}`` -> ``["--z-dim", "2", "--no-rotation"]``."""
    args = []
    for name, value in options.items():
        flag = name.replace("_", "-")
        args += [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]
    return args


def emgroup(*args, threads: int | None = None) -> None:
    """Run ``emgroup ARGS`` (``python -m emgroup``) and stop with its output when it fails."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "emgroup", *map(str, args)]
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-4000:]}")


def train_and_analyze(particles, rundir, model: str, options: dict, train: dict, analyses: dict,
                      threads: int | None = None, resume: bool = False) -> dict:
    """`emgroup train PARTICLES -o RUNDIR --model MODEL` then `emgroup analyze RUNDIR STAR -o OUTDIR` for each
    ``name -> (star, outdir)`` of ``analyses`` (10 Ward clusters, no denoised stack). With ``resume``, a run that
    RUNDIR already holds is continued (`--resume`, the same options) instead of replaced.

    Returns ``name -> {"encoding": {entry: array}, "metrics": metrics.json or {}}`` plus ``"train_seconds"`` (of
    this call: a resumed run's earlier epochs are not counted).
    """
    start = time.perf_counter()
    resume = resume and (Path(rundir) / "checkpoints" / "last.pt").is_file()
    emgroup("train", particles, "-o", rundir, "--model", model, "--resume" if resume else "--force", "--no-progress",
            *cli_options(options), *cli_options(train), threads=threads)
    out = {"train_seconds": time.perf_counter() - start}
    for name, (star, outdir) in analyses.items():
        emgroup("analyze", rundir, star, "-o", outdir, "--clusters", 10, "--cluster-method", "agglomerative",
                "--no-denoise", "--no-progress", "--device", train.get("device", "auto"), threads=threads)
        out[name] = {"encoding": read_encoding(outdir), "metrics": read_metrics(outdir)}
    return out


def read_encoding(outdir) -> dict[str, np.ndarray]:
    """Every entry of ``OUTDIR/latents.h5``'s encoding (z, z_std, theta (rad), shift (px), ...)."""
    with h5py.File(Path(outdir) / "latents.h5", "r") as h5:
        return {name: value[:] for name, value in h5["encoding"].items()}


def read_metrics(outdir) -> dict:
    path = Path(outdir) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def provenance() -> dict:
    """Where a result comes from: the command line, emgroup's commit (with ``+changes`` when the package or the
    benchmark scripts differ from it), the machine (CPU model and count, CUDA device), torch's version and the date."""
    import platform

    import torch

    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    changed = git("status", "--porcelain", "emgroup", "benchmarks/*.py")
    return {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "commit": git("rev-parse", "HEAD") + ("+changes" if changed else ""),
            "cpu": cpu, "cpus": os.cpu_count(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
            else None, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def portable_paths(text: str) -> str:
    """``text`` with this checkout's absolute paths made relative to the repository (its parent as ``..``), so a
    results file names no directory of the machine that made it."""
    return text.replace(f"{REPO}/", "").replace(f"{REPO.parent}/", "../")


def write_results(path, results: dict) -> None:
    """The benchmark's figures as JSON after their `provenance`, written atomically, paths relative to the
    repository (:func:`portable_paths`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(portable_paths(json.dumps({**provenance(), **results}, indent=2, default=float)) + "\n")


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A plain-text table of ``rows`` (dicts) with ``columns``; numbers to 3 decimals, missing entries as '-'."""
    cells = [[f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in columns]
             for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    for line in [columns, ["-" * w for w in widths], *cells]:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))


def shared_options(name: str, models: dict, quick: dict, full: dict):
    """Decorator adding the options every accuracy benchmark has: --models, --quick, --epochs, --device, --precision,
    --threads, --seed, --resume, --workdir (default runs/benchmarks/NAME) and --output."""
    options = [
        click.option("--models", default=",".join(models), show_default=True,
                     help=f"Comma-separated models among {', '.join(models)}."),
        click.option("--quick", is_flag=True, help=f"Small, CPU-affordable settings: {_describe(quick)} "
                     f"(full protocol: {_describe(full)})."),
        click.option("--epochs", type=click.IntRange(1), help="Override the number of epochs."),
        click.option("--device", default="auto", show_default=True, help="Torch device for train and analyze."),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
                     help="`emgroup train --precision` (bf16 autocast on CUDA and the CPU, fp16 on CUDA only)."),
        click.option("--threads", type=click.IntRange(1), help="OMP threads per subprocess (default: torch's)."),
        click.option("--seed", default=0, show_default=True, help="Seed of the data and of training."),
        click.option("--resume", is_flag=True, help="Continue the runs an interruption left in --workdir "
                     "(`emgroup train --resume`; the data are rewritten identically from the seed) instead of "
                     "starting them afresh."),
        click.option("--workdir", type=click.Path(file_okay=False), show_default=True,
                     default=str(REPO / "runs" / "benchmarks" / name), help="Folder for data, runs and analyses."),
        click.option("--output", type=click.Path(dir_okay=False),
                     help=f"JSON of the figures [default: benchmarks/results/{name}.json, or {name}_quick.json]."),
    ]

    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def _describe(settings: dict) -> str:
    return ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in settings.items())


def run_settings(quick: bool, epochs, seed: int, device: str, precision: str, quick_settings: dict,
                 full_settings: dict):
    """``(settings, train options)`` of a benchmark run: the quick or full settings (``epochs`` overriding theirs)
    and the `emgroup train` options (epochs, lr, batch size 100, seed, device, precision)."""
    settings = {**(quick_settings if quick else full_settings), "seed": seed, "device": device,
                "precision": precision}
    settings["epochs"] = epochs or settings["epochs"]
    train = {"epochs": settings["epochs"], "lr": settings["lr"], "batch_size": 100, "seed": seed, "device": device,
             "precision": precision}
    return settings, train


def parse_options(items) -> dict:
    """``--option KEY=VALUE`` items as a dict, each value a number or boolean as JSON reads it, anything else the
    text itself; ValueError naming an item without ``=``."""
    options = {}
    for item in items:
        key, equals, text = item.partition("=")
        if not equals:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    return options


def choose(text: str, known, what: str) -> list[str]:
    """The comma-separated names of ``text``, each checked against ``known``."""
    names = text.split(",")
    if unknown := sorted(set(names) - set(known)):
        raise click.BadParameter(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def report(name: str, quick: bool, settings: dict, models: dict, rows: list[dict], columns: list[str],
           reference: dict, output=None) -> None:
    """Print the table and write ``benchmarks/results/NAME[_quick].json`` (or ``output``)."""
    print_table(rows, columns)
    output = output or RESULTS / (f"{name}_quick.json" if quick else f"{name}.json")
    write_results(output, {"mode": "quick" if quick else "full", "settings": settings, "models": models,
                           "rows": rows, "reference": reference})
    print(f"wrote {output}")
