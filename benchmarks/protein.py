"""Simulated protein with a 1-D conformational coordinate and in-plane rotation, in place of spatial-VAE's 5HDB.

Particles of adenylate kinase along its closed->open trajectory (``adk_dims.npz``, truth = frame / (F - 1)) are
simulated with `emgroup simulate` at 40x40 px (2.5 Å/px: the open state needs an 80 Å wide disc), one projection
direction, uniform in-plane rotation, CTF (defocus 1-2.5 µm), at SNR 0.1 and noise-free; `emgroup preprocess`
normalizes them; each model is trained (`emgroup train`, z_dim 1) and analyzed (`emgroup analyze`) through the
CLI on all particles. Reported: corr(z, conformation) as the absolute Pearson correlation (and |Spearman|) of the
latent dimension that correlates best, and the Jammalamadaka-Sengupta circular correlation of the inferred angle
with the true rotation (spatial-VAE's 5HDB figures: 0.95 and 0.92), also in its form for uniform marginals (the
rotations are uniform).

    python benchmarks/protein.py --quick        # 3,000 particles, small models, 20 epochs (CPU, minutes)
    python benchmarks/protein.py --device cuda  # 20,000 particles, the paper's model size
"""

from pathlib import Path

import click
import numpy as np
from scipy import stats

from common import SHARED_DATA, choose, emgroup, report, run_settings, shared_options, train_and_analyze
from emgroup.data.stack import Stack

BOX, APIX, CONFORMATIONS = 40, 2.5, 49
#: benchmark model -> (registered model, options); Gaussian likelihood on normalized images
MODELS = {
    "spatial": ("spatial", {"z_dim": 1, "likelihood": "gaussian", "theta_prior": "uniform", "translation": False}),
    "vae": ("vae", {"z_dim": 1, "likelihood": "gaussian"}),
}
SNRS = {"snr0.1": "0.1", "noise-free": "inf"}
REFERENCE = {"spatial": {"snr0.1": {"conformation_abs_pearson": 0.95, "rotation_circular_correlation": 0.92}}}
QUICK = {"n_particles": 3000, "epochs": 20, "lr": 1e-3, "hidden": 128}
FULL = {"n_particles": 20000, "epochs": 100, "lr": 1e-4, "hidden": 500}


def simulate(folder: Path, snr: str, n: int, seed: int, trajectory, threads) -> Path:
    """Simulated and normalized particles in ``folder``; returns the STAR to train on."""
    emgroup("simulate", "-o", folder / "sim", "--trajectory", trajectory, "--conformations", CONFORMATIONS,
            "-n", n, "--box", BOX, "--apix", APIX, "--views", "inplane", "--rotation", "uniform", "--ctf",
            "--snr", snr, "--seed", seed, "--no-progress", threads=threads)
    emgroup("preprocess", folder / "sim" / "particles.star", "-o", folder / "prep", "--seed", seed, "--no-progress",
            threads=threads)
    return folder / "prep" / "particles.star"


def evaluate(result: dict, particles) -> dict:
    metrics, z = result["all"]["metrics"], result["all"]["encoding"]["z"]
    row = {"conformation_abs_pearson": metrics["latent_conformation_abs_pearson"]}
    truth = Stack.open(particles).meta["rlnEmgroupTrueConformation"].to_numpy()
    dim = metrics["latent_conformation_dim"] - 1
    row["conformation_abs_spearman"] = abs(float(stats.spearmanr(z.reshape(len(truth), -1)[:, dim], truth)[0]))
    for key in ("rotation_circular_correlation", "rotation_circular_correlation_uniform"):  # uniform angles
        if key in metrics:
            row[key] = metrics[key]
    row["train_seconds"] = result["train_seconds"]
    return row


@click.command()
@click.option("--trajectory", type=click.Path(exists=True, dir_okay=False), show_default=True,
              default=str(SHARED_DATA / "adk_dims.npz"), help="Trajectory .npz (coords (F, n, 3) Å, elements).")
@click.option("--snrs", default=",".join(SNRS), show_default=True, help="Comma-separated among snr0.1, noise-free.")
@shared_options("protein", MODELS, QUICK, FULL)
def main(trajectory, snrs, models, quick, epochs, device, precision, threads, seed, resume, workdir, output):
    settings, train = run_settings(quick, epochs, seed, device, precision, QUICK, FULL)
    snrs, models = choose(snrs, SNRS, "SNR"), choose(models, MODELS, "model")
    workdir = Path(workdir)
    rows = []
    for snr in snrs:
        particles = simulate(workdir / snr, SNRS[snr], settings["n_particles"], seed, trajectory, threads)
        for name in models:
            model, options = MODELS[name]
            analyses = {"all": (particles, workdir / snr / "analysis" / name)}
            result = train_and_analyze(particles, workdir / snr / "runs" / name, model,
                                       {**options, "hidden": settings["hidden"]}, train, analyses, threads, resume)
            rows.append({"data": snr, "model": name, **evaluate(result, particles)})
            print(f"done: {snr} {name} ({rows[-1]['train_seconds']:.0f} s training)", flush=True)
    report("protein", quick, settings, {name: MODELS[name] for name in models}, rows,
           ["data", "model", "conformation_abs_pearson", "conformation_abs_spearman", "rotation_circular_correlation",
            "rotation_circular_correlation_uniform", "train_seconds"], REFERENCE, output)

if __name__ == "__main__":
    main()
