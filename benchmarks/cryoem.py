"""The cryo-EM yardstick: realistic particles on a workstation, every image model and RELION 2D side by side.

Data (`emgroup simulate`, seeded, then `emgroup preprocess`): adenylate kinase at 40 px, 2.5 Å/px, one projection
direction, uniform in-plane rotation, shifts ~ N(0, 1.5^2) px per axis, CTF (defocus 1-2.5 µm, 300 Å astigmatism
at a random angle), white noise at SNR 0.3 or 0.1; 5,000 particles. Two kinds:

* ``mix``: a closed/open mixture (1AKE / 4AKE, half each); truth = the state;
* ``traj``: the 98-frame closed->open trajectory (DIMS); truth = the frame (0..1).

Rows: every image model with the CTF modelled (the default when particles carry defocus) and, on mix-snr0.3 only,
without it (``-noctf``) and TARGET-VAE P16; each trains for a fixed number of epochs that fits 2 CPU cores in at most 30 minutes
(the training time is in the table), then `emgroup analyze` writes particles.star, the source of every figure:

* ``state_accuracy`` (mix): `analyze --clusters 2` clusters against the true state, Hungarian-matched;
* ``conformation_r`` (traj): Pearson correlation of the frame with its 5-fold cross-validated linear regression on
  all latent dimensions (``rlnEmgroupLatent*``);
* ``rotation_uniform`` / ``rotation_published``: Jammalamadaka-Sengupta circular correlation of rlnAnglePsi with
  the true angle, in its form for uniform angles and as published, each with a 95% bootstrap interval;
* ``shift_x`` / ``shift_y``: Pearson correlation of rlnOriginX/YAngst with the true origin;
* ``per_class`` (mix): the rotation's agreement within each class and the class frame's mean offset (degrees);
* ``denoised_r``: mean correlation of the denoised particles with the clean projections (`analyze` metrics.json);
* ``aligned`` (mix, models with a pose): the rotation and shift figures again from `analyze --align-classes`, which
  brings both classes into one frame (a generator may draw each state in a frame of its own).

The peer: RELION 2D classification of the same stack (``relion_refine`` without a reference, ``--K 2`` on mix and
``--K 5`` on traj, CTF, 25 iterations, the settings in :data:`RELION_2D`), its class index scored like a cluster
(traj: the frame predicted by its class's cross-validated mean) and its psi/origins like a pose.

    python benchmarks/cryoem.py --threads 2                    # the default sets, every row (hours on 2 cores)
    python benchmarks/cryoem.py --quick                        # 2,000 particles, 10 epochs (under 5 minutes)
    python benchmarks/cryoem.py --sets mix-snr0.3 --models spatial,target-P8 --no-relion
    python benchmarks/cryoem.py --sets mix-snr0.3 --models target-P8 --no-relion --option hidden=256
"""

import json
import shutil
import subprocess
import time
from pathlib import Path

import click
import numpy as np
import pandas as pd
from scipy import stats
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import KFold, cross_val_predict

from common import (REPO, RESULTS, SHARED_DATA, choose, cli_options, emgroup, parse_options, print_table, provenance,
                    write_results)
from emgroup.analysis.metrics import circular_correlation, circular_correlation_uniform, clustering_accuracy, pearson
from emgroup.data.poses import model_from_relion
from emgroup.io.star import read_star

BOX, APIX, SHIFT_SIGMA, ASTIGMATISM = 40, 2.5, 1.5, 300.0
#: data set -> (kind, SNR)
SETS = {"mix-snr0.3": ("mix", 0.3), "traj-snr0.3": ("traj", 0.3), "mix-snr0.1": ("mix", 0.1),
        "traj-snr0.1": ("traj", 0.1)}
#: TARGET-VAE's widths for these 40 px particles on a CPU, trained at `emgroup train`'s default lr 1e-3: a training
#: step 2.8x faster than at the paper's (128 channels, 1024 Fourier features, 512 units; the ``target-P8-paper`` row,
#: lr 2e-4), and better on every figure of the yardstick in 10 epochs (docs/models-target.md)
TARGET_CPU = {"hidden": 256, "fourier_features": 512, "channels": 64}
#: benchmark row -> (registered model, model options, training settings); z_dim 1 (one conformational coordinate);
#: spatial-VAE's width written out (its default since these rows; the paper's 500 costs 2.6x per epoch and at SNR 0.1
#: did not separate the states in 12 epochs: docs/models-spatial.md)
MODELS = {
    "spatial": ("spatial", {"z_dim": 1, "hidden": 256}, {"epochs": 12, "precision": "auto"}),
    "target-P8": ("target", {"z_dim": 1, "group": "P8", **TARGET_CPU}, {"epochs": 10, "precision": "auto"}),
    "target-P8-paper": ("target", {"z_dim": 1, "group": "P8"}, {"epochs": 10, "precision": "auto", "lr": 2e-4}),
    "target-P16": ("target", {"z_dim": 1, "group": "P16", **TARGET_CPU}, {"epochs": 5, "precision": "auto"}),
    "vae": ("vae", {"z_dim": 1}, {"epochs": 30, "precision": "fp32"}),
}
#: the set that alone gets the rows of FIRST_SET_ONLY and those without the CTF (whatever the order of --sets)
FIRST_SET = "mix-snr0.3"
FIRST_SET_ONLY = ("target-P16",)
NO_CTF = ("spatial", "target-P8", "vae")
#: the sets of a run without --sets (traj-snr0.1 on request: no target is set on it)
DEFAULT_SETS = ("mix-snr0.3", "traj-snr0.3", "mix-snr0.1")
#: a check of the pipeline within 5 minutes on 2 CPU cores without bf16 units (fp32: 4 min 46 s), long enough for
#: spatial-VAE to find the states and the rotation (docs/benchmarks.md)
QUICK = {"n_particles": 2000, "sets": ["mix-snr0.3"], "models": ["spatial", "vae"],
         "epochs": {"spatial": 10, "vae": 10}, "relion": False}
#: relion_refine 2D classification (no reference): CTF, 25 iterations, 12-degree psi steps, shifts within 5 px in
#: 2 px steps (finer with RELION's adaptive oversampling)
RELION_2D = ["--iter", "25", "--tau2_fudge", "2", "--particle_diameter", "90", "--ctf", "--flatten_solvent",
             "--zero_mask", "--oversampling", "1", "--psi_step", "12", "--offset_range", "5", "--offset_step", "2",
             "--norm", "--scale", "--dont_combine_weights_via_disc", "--pool", "100", "--pad", "2"]
TRUTH = "rlnEmgroupTrueConformation"
COLUMNS = ["data", "model", "budget", "state_accuracy", "conformation_r", "rotation_uniform", "rotation_published",
           "shift_x", "shift_y", "denoised_r", "train_seconds"]
#: what the issue asks of TARGET-VAE P8 and spatial-VAE (SNR 0.3; SNR 0.1: state and rotation)
TARGETS = {"mix-snr0.3": {"state_accuracy": 0.95, "rotation_uniform": 0.90, "rotation_published": 0.80,
                          "shift_x": 0.95, "shift_y": 0.95},
           "traj-snr0.3": {"conformation_r": 0.90}, "mix-snr0.1": {"state_accuracy": 0.85, "rotation_uniform": 0.80}}


def simulate(folder: Path, kind: str, snr: float, n: int, seed: int, threads) -> Path:
    """Simulated, preprocessed particles in ``folder`` (the clean projections beside them for `analyze`'s
    denoising score); returns the STAR to train on."""
    if kind == "mix":
        source = ["--pdb", SHARED_DATA / "adk_closed.pdb", "--pdb2", SHARED_DATA / "adk_open.pdb", "--conformations", 2]
    else:
        source = ["--trajectory", SHARED_DATA / "adk_dims.npz", "--conformations", 98]
    emgroup("simulate", "-o", folder / "sim", *source, "-n", n, "--box", BOX, "--apix", APIX, "--rotation",
            "uniform", "--shift-sigma", SHIFT_SIGMA, "--ctf", "--defocus", "1.0-2.5", "--astigmatism", ASTIGMATISM,
            "--snr", snr, "--seed", seed, "--no-progress", threads=threads)
    emgroup("preprocess", folder / "sim" / "particles.star", "-o", folder / "prep", "--seed", seed, "--no-progress",
            threads=threads)
    shutil.copyfile(folder / "sim" / "clean.mrcs", folder / "prep" / "clean.mrcs")
    return folder / "prep" / "particles.star"


def truth(particles: pd.DataFrame) -> dict:
    """True angle (rad), image-frame origin (Å) and conformation of each particle of an analyzed STAR (the input
    pose is kept there as rlnEmgroupInput*)."""
    psi = particles["rlnEmgroupInputAnglePsi"].to_numpy()
    origin = particles[["rlnEmgroupInputOriginXAngst", "rlnEmgroupInputOriginYAngst"]].to_numpy()
    return {"theta": model_from_relion(psi, *origin.T, APIX)[0], "origin": origin,
            "conformation": particles[TRUTH].to_numpy()}


def score(kind: str, particles: pd.DataFrame, true: dict, seed: int, latents=None) -> dict:
    """The row's figures from a STAR with rlnClassNumber and, unless the model has no pose (all zero),
    rlnAnglePsi, rlnOriginX/YAngst (and ``latents`` (N, k) for the trajectory)."""
    pose = particles[["rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
    row = {}
    if pose.any():
        theta = model_from_relion(*pose.T, APIX)[0]
        for name, statistic in (("rotation_uniform", circular_correlation_uniform),
                                ("rotation_published", circular_correlation)):
            row[name] = statistic(theta, true["theta"])
            interval = stats.bootstrap((theta, true["theta"]), statistic, paired=True, vectorized=False,
                                       n_resamples=200, random_state=seed).confidence_interval
            row[f"{name}_95"] = [float(interval.low), float(interval.high)]
        for i, axis in enumerate("xy"):
            row[f"shift_{axis}"] = pearson(pose[:, 1 + i], true["origin"][:, i])
    classes = particles["rlnClassNumber"].to_numpy()
    if kind == "mix":
        row["state_accuracy"] = clustering_accuracy(true["conformation"], classes)
        if pose.any():
            row["per_class"] = [per_class(theta[classes == k], true["theta"][classes == k]) | {"class": int(k)}
                                for k in np.unique(classes)]
    else:
        features = (np.eye(classes.max() + 1)[classes] if latents is None else latents)  # one-hot classes for RELION
        folds = KFold(5, shuffle=True, random_state=seed)
        predicted = cross_val_predict(LinearRegression(), features, true["conformation"], cv=folds)
        row["conformation_r"] = pearson(predicted, true["conformation"])
    return row


def per_class(theta, true_theta) -> dict:
    """Within one class: the rotation's agreement with the truth (uniform form) and the class frame's mean offset
    from the truth's (degrees), which a statistic over all classes counts as error."""
    offset = np.angle(np.mean(np.exp(1j * (theta - true_theta))))
    return {"particles": len(theta), "rotation_uniform": circular_correlation_uniform(theta, true_theta),
            "offset_deg": float(np.degrees(offset))}


def with_options(model: str, options: dict, train: dict, variant: dict) -> tuple[str, dict, dict]:
    """A row's ``(model, options, train)`` with the ``--option`` entries of ``variant`` in place of its own."""
    return model, {**options, **variant}, {key: value for key, value in train.items() if key not in variant}


def run_model(name: str, model: str, options: dict, train: dict, particles: Path, folder: Path, kind: str,
              seed: int, threads, align: bool = True) -> dict:
    """Train, analyze and score one row (on ``mix`` also with `--align-classes` unless not ``align``)."""
    run, out = folder / "runs" / name, folder / "analysis" / name
    start = time.perf_counter()
    emgroup("train", particles, "-o", run, "--model", model, "--force", "--no-progress", "--seed", seed,
            *cli_options(options), *cli_options(train), threads=threads)
    seconds = time.perf_counter() - start
    emgroup("analyze", run, "-o", out, "--clusters", 2 if kind == "mix" else 5, "--seed", seed, "--no-progress",
            threads=threads)
    particles_out, _ = read_star(out / "particles.star")
    latents = particles_out.filter(regex=r"^rlnEmgroupLatent\d+$").to_numpy()
    row = score(kind, particles_out, truth(particles_out), seed, latents)
    metrics = json.loads((out / "metrics.json").read_text())
    history = pd.read_csv(run / "metrics.csv")
    precision = json.loads((run / "config.json").read_text())["training"]["precision"]
    aligned = (score_aligned(run, folder / "analysis" / f"{name}-aligned", seed, threads)
               if kind == "mix" and align else {})
    return {**row, "denoised_r": metrics.get("denoised_clean_correlation"), "train_seconds": seconds,
            "budget": f"{len(history)} epochs", "precision": precision, **aligned,
            "learning_curve": history[["epoch", "train_loss", "val_loss"]].to_dict("list")}


def score_aligned(run: Path, out: Path, seed: int, threads) -> dict:
    """``{"aligned": pose figures}`` of the trained ``run`` analysed with `--align-classes` into ``out`` (2
    clusters), or nothing for a model without a pose."""
    emgroup("analyze", run, "-o", out, "--clusters", 2, "--seed", seed, "--align-classes", "--no-denoise",
            "--no-report", "--no-progress", threads=threads)
    particles, _ = read_star(out / "particles.star")
    row = score("mix", particles, truth(particles), seed)
    poses = {key: value for key, value in row.items() if key.startswith(("rotation", "shift"))}
    return {"aligned": poses} if poses else {}


def run_relion(particles: Path, folder: Path, kind: str, seed: int, threads: int) -> dict:
    """RELION 2D classification of the stack, scored like a model's particles.star."""
    out = folder / "relion2d"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    k = 2 if kind == "mix" else 5
    command = ["relion_refine", "--i", str(particles), "--o", str(out / "run"), "--K", str(k), "--j", str(threads),
               "--random_seed", str(seed), *RELION_2D]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"relion_refine failed:\n{done.stdout[-3000:]}")
    result, _ = read_star(out / "run_it025_data.star")
    source, _ = read_star(particles)
    true = {"theta": model_from_relion(source["rlnAnglePsi"].to_numpy(), source["rlnOriginXAngst"].to_numpy(),
                                       source["rlnOriginYAngst"].to_numpy(), APIX)[0],
            "origin": source[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), "conformation": source[TRUTH]
            .to_numpy()}
    result = result.set_index("rlnImageName").loc[source["rlnImageName"]].reset_index()
    result["rlnClassNumber"] = result["rlnClassNumber"].astype(int) - 1
    return {**score(kind, result, true, seed), "train_seconds": seconds, "budget": f"K={k}, 25 iterations",
            "command": " ".join(command)}


@click.command()
@click.option("--sets", default=",".join(DEFAULT_SETS), show_default=True,
              help=f"Comma-separated among {', '.join(SETS)}.")
@click.option("--models", default=",".join(MODELS), show_default=True,
              help=f"Comma-separated among {', '.join(MODELS)} ({', '.join(NO_CTF)} also without the CTF, and "
              f"{', '.join(FIRST_SET_ONLY)} only, on {FIRST_SET}).")
@click.option("--relion/--no-relion", default=True, show_default=True, help="RELION 2D classification rows.")
@click.option("--ctf-ablation/--no-ctf-ablation", default=True, show_default=True,
              help=f"The rows of {', '.join(NO_CTF)} without the CTF, on {FIRST_SET}.")
@click.option("--quick", is_flag=True, help=f"{QUICK['n_particles']} particles, the first set, spatial and vae for "
              "a few epochs, no RELION (under 5 minutes).")
@click.option("-n", "--n-particles", default=5000, show_default=True, help="Particles per set.")
@click.option("--option", "model_options", multiple=True, metavar="KEY=VALUE",
              help="An `emgroup train --KEY VALUE` option (e.g. hidden=256, lr=0.001) in place of each row's own for "
              "every model of --models; the rows are named MODEL+KEY=VALUE. Repeatable.")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True, help="CPU threads per run.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]),
              help="Every row's `emgroup train --precision` [default: each row's own in MODELS: auto (bf16 on CPUs "
              "with AMX or AVX512-BF16, fp32 elsewhere, where bf16 is emulated and slower) for spatial-VAE and "
              "TARGET-VAE, fp32 for the VAE; each row records the precision it trained in].")
@click.option("--seed", default=0, show_default=True, help="Seed of the data, training and analysis.")
@click.option("--resume", is_flag=True, help="Keep the rows already in --workdir (rows/*.json) instead of redoing "
              "them.")
@click.option("--collect", is_flag=True, help="Run nothing: the table and JSON of every row already in --workdir for "
              "--sets (after runs split over several invocations).")
@click.option("--workdir", type=click.Path(file_okay=False), default=str(REPO / "runs" / "benchmarks" / "cryoem"),
              show_default=True, help="Folder for data, runs and analyses.")
@click.option("--output", type=click.Path(dir_okay=False),
              help="JSON of the figures [default: benchmarks/results/cryoem.json, or cryoem_quick.json].")
def main(sets, models, relion, ctf_ablation, quick, n_particles, model_options, threads, precision, seed, resume,
         collect, workdir, output):
    sets, models = choose(sets, SETS, "set"), choose(models, MODELS, "model")
    try:
        variant = parse_options(model_options)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--option") from None
    suffix = "".join(f"+{item}" for item in model_options)
    if quick:
        sets, models, relion, n_particles = QUICK["sets"], QUICK["models"], QUICK["relion"], QUICK["n_particles"]
    workdir = Path(workdir)
    rows = []
    for data in sets:
        kind, snr = SETS[data]
        folder = workdir / data
        particles = folder / "prep" / "particles.star"
        if collect and not particles.is_file():
            continue
        if not ((resume or collect) and particles.is_file()):
            particles = simulate(folder, kind, snr, n_particles, seed, threads)
        jobs = [(name + suffix, *with_options(*MODELS[name], variant)) for name in models
                if data == FIRST_SET or name not in FIRST_SET_ONLY]
        jobs += [(f"{name}-noctf", model, {**options, "ctf": False}, train) for name, model, options, train in jobs
                 if data == FIRST_SET and name.removesuffix(suffix) in NO_CTF and ctf_ablation and not quick]
        if relion:
            jobs.append(("relion-2D", None, None, None))
        if collect:  # and every other row run on this set (e.g. one without the CTF made by an earlier invocation)
            jobs += [(path.stem, None, None, None) for path in sorted((folder / "rows").glob("*.json"))
                     if path.stem not in {job[0] for job in jobs}]
        for name, model, options, train in jobs:
            cached = folder / "rows" / f"{name}.json"
            if (resume or collect) and cached.is_file():
                row = json.loads(cached.read_text())
            elif collect:
                continue
            else:
                if model is None:
                    row = run_relion(particles, folder, kind, seed, threads)
                else:
                    train = {**train, "epochs": QUICK["epochs"].get(name.removesuffix(suffix), train["epochs"])} \
                        if quick else train
                    train = {**train, "precision": precision} if precision else train
                    row = run_model(name, model, options, train, particles, folder, kind, seed, threads,
                                    align=not quick)
                row = {"data": data, "model": name, **row, **provenance()}
                cached.parent.mkdir(parents=True, exist_ok=True)
                write_results(cached, row)
            rows.append(row)
            print(f"done: {data} {name} ({row['train_seconds']:.0f} s)", flush=True)
    print_table(rows, COLUMNS)
    output = output or RESULTS / ("cryoem_quick.json" if quick else "cryoem.json")
    write_results(output, {**provenance(), "mode": "quick" if quick else "full", "n_particles": n_particles,
                           "threads": threads, "precision": precision, "seed": seed,
                           "models": {name: MODELS[name] for name in models}, "options": variant,
                           "relion_2d": RELION_2D, "targets": TARGETS, "rows": rows})
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
