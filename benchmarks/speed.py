"""Training speed side by side with the public code, in one run, at equal model settings (issue 19, part 2).

Each case trains one epoch of the public script (a clone given by ``--target-vae-dir`` / ``--spatial-vae-dir``, run
unmodified in a child process by benchmarks/reference.py's machinery, its ``train_epoch`` timed) and one epoch of
`emgroup train` with the same model settings on the same particles, in fp32 and in bf16 (the public code has no other
precision than fp32). Seconds are of the training pass alone (not the validation pass, not start-up): the public
``train_epoch``'s wall time, and ours from metrics.csv's particles/s.

* ``target-P8 50px``: TARGET-VAE on MNIST(U) digits of 50 x 50 (mnist.py's protocol), the paper's MNIST settings:
  P8, z 2, 128 channels, kernel 28, padding 8, 1024 Fourier features, generator 2 x 512, batch 100, Bernoulli.
* ``target-P8 100px``: TARGET-VAE on simulated adenylate-kinase particles of 100 x 100 with CTF, the paper's
  cryo-EM generator (6 x 512), P8, z 2, kernel 56, padding 16; batch 16 (at batch 100 the public code needs
  ~45 GiB, more than this machine's 24).
* ``spatial 40px``: spatial-VAE on the yardstick's particles (40 x 40, CTF, SNR 0.3): z 2, 2 x 500 in both networks,
  the public particle recipe (``--augment-rotation --z-delay 2``, ours ``augment_rotation``, ``freeze_z_epochs 2``),
  our pose search off (the public model has none), batch 100.

The table also gives the fraction of the CPU's matrix-product peak that each training pass reaches: the model's
multiply-adds per particle (:func:`madds`) times particles/s, over those of a 2048^3 ``torch.mm`` on the same threads
in the row's precision.

    python benchmarks/speed.py --target-vae-dir ../ref/target-vae --spatial-vae-dir ../ref/spatial-vae [--quick]

Writes benchmarks/results/speed.json.
"""

import os
import time
from pathlib import Path

import click
import numpy as np
import torch

import cryoem
import mnist
import reference
from common import REPO, RESULTS, SHARED_DATA, choose, cli_options, emgroup, print_table, write_results
from emgroup.data.stack import Stack
from emgroup.models.registry import model_class
from emgroup.train.data import split_indices

#: case -> (public repository option, our model, model options, `emgroup train` options, particles to train on)
CASES = {
    "target-P8 50px": ("target_vae_dir", "target", {"group": "P8", "z_dim": 2, "likelihood": "bernoulli",
                                                   "hidden": 512, "generator_layers": 2}, {"batch_size": 100}, 500),
    "target-P8 100px": ("target_vae_dir", "target", {"group": "P8", "z_dim": 2, "hidden": 512,
                                                    "generator_layers": 6, "ctf": True}, {"batch_size": 16}, 96),
    "spatial 40px": ("spatial_vae_dir", "spatial", {"z_dim": 2, "hidden": 500, "layers": 2, "ctf": True,
                                                    "pose_search": 0, "augment_rotation": True,
                                                    "freeze_z_epochs": 2}, {"batch_size": 100}, 2000),
}
COLUMNS = ["case", "code", "precision", "particles", "epoch_seconds", "particles_per_s", "speedup", "peak_fraction"]


def particles(case: str, n: int, workdir: Path, seed: int, threads: int) -> Path:
    """The STAR of the case's particles (``n`` for training, as many again / 9 held out)."""
    total = round(n / 0.9)
    if case.startswith("target-P8 50px"):
        dataset = mnist.make_datasets(workdir, SHARED_DATA / "mnist10k.npz", total, 100, seed)["U"]
        return dataset["folder"] / "train.star"
    if case.startswith("spatial"):
        return cryoem.simulate(workdir, "mix", 0.3, total, seed, threads)
    emgroup("simulate", "-o", workdir / "sim", "--pdb", SHARED_DATA / "adk_closed.pdb", "-n", total, "--box", 100,
            "--apix", 1.0, "--shift-sigma", 3, "--snr", 0.3, "--seed", seed, "--no-progress", threads=threads)
    emgroup("preprocess", workdir / "sim" / "particles.star", "-o", workdir / "prep", "--seed", seed,
            "--no-progress", threads=threads)
    return workdir / "prep" / "particles.star"


def public_seconds(case: str, repo: Path, star: Path, workdir: Path, seed: int, threads: int) -> dict:
    """One epoch of the public script on the training particles of ``star``."""
    row, data = ("spatial", "mix") if case.startswith("spatial") else ("target-P8", "mnist-U" if "50px" in case
                                                                         else "particles")
    _, model, options, train, _ = CASES[case]
    stack = Stack.open(star)
    inputs = workdir / "public"
    train_rows, ctf = reference.write_inputs(inputs, stack, seed, mnist_scale=data == "mnist-U")
    config = model_class(model).Config(**options)
    script, args = reference.public_command(row, data, config, {**train, "epochs": 1}, stack.box, workdir / "run",
                                            ctf)
    record = reference.train_public(repo, script, args, inputs, workdir / "run", seed, threads)
    return {"particles": len(train_rows), "epoch_seconds": record["epoch_seconds"], "command": record["command"]}


def our_seconds(case: str, star: Path, workdir: Path, precision: str, seed: int, threads: int) -> dict:
    """One epoch of `emgroup train` on the training particles of ``star`` in ``precision``."""
    _, model, options, train, _ = CASES[case]
    rundir = workdir / f"emgroup_{precision}"
    emgroup("train", star, "-o", rundir, "--model", model, "--epochs", 1, "--force", "--no-progress", "--seed", seed,
            "--precision", precision, *cli_options(options), *cli_options(train), threads=threads)
    n = len(split_indices(Stack.open(star), None, seed)[0])
    return {"particles": n, "epoch_seconds": reference.our_epoch_seconds(rundir, n)}


def madds(case: str, box: int) -> float:
    """Multiply-adds of one training pass per particle at the case's settings, forward and backward (3 x the
    forward's for a layer with trained inputs, 2 x for the lifting convolution, whose input, the image, needs no
    gradient). spatial-VAE: the MLP encoder and the generator at every pixel. TARGET-VAE: the lifting convolution,
    the 1x1 group convolution and the head at every cell (translation x rotation), and the generator at every pixel
    (random Fourier features -> hidden -> ... -> 1). Recomputed chunks are not counted (the same product twice)."""
    _, name, options, _, _ = CASES[case]
    hidden, layers, k = options["hidden"], options.get("layers", options.get("generator_layers")), options["z_dim"]
    body = (layers - 1) * hidden**2 + hidden  # the generator's hidden layers and output, per pixel
    if name == "spatial":
        encoder = box**2 * hidden + (layers - 1) * hidden**2 + hidden * 2 * (k + 3)
        return 3.0 * (encoder + box**2 * ((2 + k) * hidden + body))
    model = model_class(name)(model_class(name).Config(**options), box)
    c_out, _, kernel, _ = model.lift.weight.shape
    maps = len(model.positions) ** 2 * model.lift.rotations  # cells x rotations
    mix, head = model.mix.linear.weight.numel(), model.head.linear.weight.numel()
    fourier = model.generator.coords.linear.weight.numel()
    return 2.0 * maps * c_out * kernel**2 + 3.0 * (maps * (mix + head) + box**2 * (fourier + body))


def matmul_madds_per_second(threads: int, precision: str) -> float:
    """Multiply-adds per second of a 2048^3 ``torch.mm`` in ``precision`` on ``threads`` threads (best of 5)."""
    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(5))
    return 2048**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@click.command()
@click.option("--target-vae-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Clone of github.com/SMLC-NYSBC/TARGET-VAE (the target cases).")
@click.option("--spatial-vae-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Clone of github.com/tbepler/spatial-VAE (the spatial case).")
@click.option("--cases", default=",".join(CASES), show_default=True, help="Comma-separated among the cases.")
@click.option("--precisions", default="fp32,bf16", show_default=True,
              help="Comma-separated precisions of our runs (bf16 is emulated, and slow, on CPUs without AMX or "
                   "AVX512-BF16).")
@click.option("--quick", is_flag=True, help="A quarter of every case's particles (a pipeline check).")
@click.option("--threads", default=2, show_default=True, help="CPU threads of every run.")
@click.option("--seed", default=0, show_default=True, help="Seed of the data and of both codes.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), show_default=True,
              default=REPO / "runs" / "benchmarks" / "speed", help="Folder for the data and runs.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=RESULTS / "speed.json",
              show_default=True, help="JSON of the figures.")
def main(target_vae_dir, spatial_vae_dir, cases, precisions, quick, threads, seed, workdir, output):
    given = {"target_vae_dir": target_vae_dir, "spatial_vae_dir": spatial_vae_dir}
    cases = choose(cases, CASES, "case")
    if missing := sorted({CASES[case][0] for case in cases if given[CASES[case][0]] is None}):
        raise click.UsageError(f"--{', --'.join(name.replace('_', '-') for name in missing)} needed")
    precisions = choose(precisions, ("fp32", "bf16"), "precision")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    peak = {precision: matmul_madds_per_second(threads, precision) for precision in ("fp32", *precisions)}
    settings = {"threads": threads, "seed": seed, "matmul_madds_per_second": peak,
                "cases": {case: {"model": CASES[case][1], "options": CASES[case][2], "train": CASES[case][3]}
                          for case in cases},
                "repositories": {name: {"dir": str(path), "commit": reference.commit(path)}
                                 for name, path in given.items() if path}}
    rows = []
    for case in cases:
        folder = workdir.resolve() / case.replace(" ", "_")
        star = particles(case, CASES[case][4] // (4 if quick else 1), folder / "data", seed, threads)
        public = public_seconds(case, given[CASES[case][0]].resolve(), star, folder, seed, threads)
        rows.append({"case": case, "code": "public", "precision": "fp32", **public})
        for precision in precisions:
            rows.append({"case": case, "code": "emgroup", "precision": precision,
                         **our_seconds(case, star, folder, precision, seed, threads)})
        case_rows, per_particle = rows[-1 - len(precisions):], madds(case, Stack.open(star).box)
        for row in case_rows:
            row["particles_per_s"] = row["particles"] / row["epoch_seconds"]
            row["speedup"] = row["particles_per_s"] / case_rows[0]["particles_per_s"]
            row["peak_fraction"] = row["particles_per_s"] * per_particle / peak[row["precision"]]
        print_table(case_rows, COLUMNS)
        write_results(output, {"benchmark": "training speed of one epoch against the public code, equal settings",
                               **settings, "rows": rows})  # after each case, so a stopped run keeps what it did
    print_table(rows, COLUMNS)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
