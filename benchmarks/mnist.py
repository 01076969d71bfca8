"""Rotated and translated MNIST after the TARGET-VAE paper's protocol (Nasiri & Bepler 2022), on 10,000 digits.

MNIST(N): theta ~ N(0, pi^2/16); MNIST(U): theta ~ U(0, 2 pi); both with translations ~ N(0, 5^2) px per axis,
each 28x28 digit zero-padded to the centre of a 50x50 canvas. The 10,000 digits of ``mnist10k.npz`` (already
shuffled) split into the first 8,000 for training (`emgroup train` holds 800 of them out for validation) and
the last 2,000 for testing, where the paper trains on MNIST's 60,000 and tests on its 10,000; poses are seeded.
The sets are written as .mrcs + RELION 3.1 .star (true pose as rlnAnglePsi / rlnOriginX/YAngst at 1 Å/px, digit
as rlnEmgroupTrueClass), with the test digits also untransformed (``test_centred.star``) for the relative metrics.
Each model is trained and analyzed through the `emgroup` CLI. Reported on the test split:

* rotation: Jammalamadaka-Sengupta circular correlation with the applied angle, "relative" (the published
  figure: each digit's predicted angle minus the prediction for the same digit untransformed) and "absolute",
  each also in the statistic's form for uniform marginals (``_uniform``: stable when the angles cover the circle);
* translation: Pearson correlation per axis with the applied translation (image frame, RELION's origin),
  relative and absolute;
* clustering accuracy (Hungarian-matched) of 10 Ward agglomerative clusters of the latent means (as `emgroup
  analyze`), and of the means concatenated with the standard deviations (the papers' features).

    python benchmarks/mnist.py --quick --models spatial,vae,beta-vae   # 2,000/500 digits, small models (CPU)
    python benchmarks/mnist.py --device cuda        # the papers' model widths, up to 100 epochs
"""

import math
from pathlib import Path

import click
import numpy as np
import pandas as pd

from common import SHARED_DATA, choose, report, run_settings, shared_options, train_and_analyze
from emgroup.analysis.clustering import cluster_latents
from emgroup.analysis.metrics import clustering_accuracy, pose_metrics
from emgroup.data.poses import model_from_relion, relion_from_model
from emgroup.data.stack import write_particles
from emgroup.data.transforms import transform_images
from emgroup.io.star import optics_table

BOX, APIX, SHIFT_SIGMA = 50, 1.0, 5.0  # canvas (px), nominal pixel size (Å), translation std (px)
N_TRAIN = 8000
#: dataset -> in-plane angle sampler (rng, n) -> radians
DATASETS = {"N": lambda rng, n: rng.normal(0.0, math.pi / 4, n), "U": lambda rng, n: rng.uniform(0, 2 * math.pi, n)}
#: benchmark model -> (registered model, options, per-dataset options); Bernoulli likelihood on [0, 1] pixels;
#: spatial-VAE as the paper has it, the pose from its encoder (`--pose-search 0`; the pose search, its default for
#: particles, did not learn MNIST(U) in the quick protocol either: docs/benchmarks.md)
MODELS = {
    **{name: ("spatial", {"z_dim": 2, "likelihood": "bernoulli", "shift_sigma": SHIFT_SIGMA, "pose_search": 0, **extra},
              {"N": {"theta_prior": "normal:45"}, "U": {"theta_prior": "uniform"}})
       for name, extra in (("spatial", {}), ("spatial-augment", {"augment_rotation": True}))},
    **{f"target-{group}-z{z_dim}": ("target", {"group": group, "z_dim": z_dim, "likelihood": "bernoulli",
                                               "shift_sigma": SHIFT_SIGMA, "generator_layers": 2},
                                    {"N": {"rotation_prior": "normal:45"}, "U": {"rotation_prior": "uniform"}})
       for group, z_dim in (("P8", 2), ("P16", 2), ("P8", 32), ("P16", 32))},
    "vae": ("vae", {"z_dim": 4, "likelihood": "bernoulli"}, {}),
    "beta-vae": ("vae", {"z_dim": 4, "likelihood": "bernoulli", "beta": 4.0}, {}),
}
#: published figures (TARGET-VAE paper, Table 1-2), relative pose metrics
REFERENCE = {"spatial": {"N": {"rotation_relative": 0.564, "clustering_accuracy": 0.371},
                         "U": {"translation_relative": 0.982}},
             "target-P16-z2": {"U": {"rotation_relative": 0.93, "translation_relative": 0.97}},
             "target-P8-z32": {"N": {"clustering_accuracy": 0.777}},
             "target-P16-z32": {"U": {"clustering_accuracy": 0.712}},
             "vae": {"N": {"clustering_accuracy": 0.153}}}
QUICK = {"n_train": 2000, "n_test": 500, "epochs": 20, "lr": 1e-3, "hidden": 128}
FULL = {"n_train": N_TRAIN, "n_test": 2000, "epochs": 100, "lr": 1e-4, "hidden": 500}


def load_digits(path) -> tuple[np.ndarray, np.ndarray]:
    """Digits (10000, 50, 50) float32 in [0, 1], each 28x28 digit centred on the canvas; labels (10000,)."""
    with np.load(path) as data:
        digits, labels = data["images"].astype(np.float32) / 255, data["labels"].astype(int)
    pad = (BOX - digits.shape[-1]) // 2
    return np.pad(digits, ((0, 0), (pad, BOX - digits.shape[-1] - pad), (pad, pad + BOX % 2))), labels


def write_set(star, canvas, labels, theta=None, origin_px=None) -> None:
    """``canvas`` digits in pose (theta rad, image-frame origin px) as STAR + MRCS; untransformed when None."""
    meta = pd.DataFrame({"rlnEmgroupTrueClass": labels})
    images = canvas
    if theta is not None:
        _, shift = model_from_relion(np.degrees(theta), *(origin_px * APIX).T, APIX)
        images = np.clip(transform_images(canvas, theta, shift), 0, 1)
        psi, origin_x, origin_y = relion_from_model(theta, shift, APIX)
        meta = meta.assign(rlnAnglePsi=psi, rlnOriginXAngst=origin_x, rlnOriginYAngst=origin_y)
    write_particles(star, [images], meta, optics_table(APIX, BOX), APIX)


def make_datasets(workdir: Path, data, n_train: int, n_test: int, seed: int) -> dict:
    """Writes train/test/test_centred STARs per dataset; returns dataset -> (paths, true theta, true origin)."""
    canvas, labels = load_digits(data)
    train = np.arange(n_train)
    test = N_TRAIN + np.arange(n_test)
    sets = {}
    for k, (name, sample_theta) in enumerate(DATASETS.items()):
        rng = np.random.default_rng([seed, k])
        folder = workdir / f"mnist_{name}"
        truth = {}
        for split, rows in (("train", train), ("test", test)):
            theta, origin = sample_theta(rng, len(rows)), rng.normal(0.0, SHIFT_SIGMA, (len(rows), 2))
            write_set(folder / f"{split}.star", canvas[rows], labels[rows], theta, origin)
            truth[split] = (theta, origin)
        write_set(folder / "test_centred.star", canvas[test], labels[test])
        sets[name] = {"folder": folder, "truth": truth["test"], "labels": labels[test]}
    return sets


def image_frame_origin(encoding: dict) -> np.ndarray:
    """(N, 2) inferred translation in the image frame (RELION's origin), px."""
    _, origin_x, origin_y = relion_from_model(encoding["theta"], encoding["shift"], 1.0)
    return np.column_stack([origin_x, origin_y])


def evaluate(result: dict, theta_true, origin_true, labels) -> dict:
    """The benchmark's figures for one trained model from its test and centred-test encodings."""
    test, centred = result["test"]["encoding"], result["centred"]["encoding"]
    row = {}
    if "theta" in test and "shift" in test:
        absolute = pose_metrics(test["theta"], image_frame_origin(test), theta_true, origin_true)
        relative = pose_metrics(test["theta"] - centred["theta"],
                                image_frame_origin(test) - image_frame_origin(centred), theta_true, origin_true)
        for name, metrics in (("relative", relative), ("absolute", absolute)):
            row[f"rotation_{name}"] = metrics["rotation_circular_correlation"]
            row[f"rotation_{name}_uniform"] = metrics["rotation_circular_correlation_uniform"]
            row[f"translation_x_{name}"] = metrics["translation_pearson_x"]
            row[f"translation_y_{name}"] = metrics["translation_pearson_y"]
    row["clustering_accuracy"] = result["test"]["metrics"]["clustering_accuracy"]
    features = np.hstack([test["z"], test["z_std"]])
    row["clustering_accuracy_mean_std"] = clustering_accuracy(
        labels, cluster_latents(features, 10, "agglomerative").labels)
    row["train_seconds"] = result["train_seconds"]
    return row


@click.command()
@click.option("--data", type=click.Path(exists=True, dir_okay=False), default=str(SHARED_DATA / "mnist10k.npz"),
              show_default=True, help="MNIST digits (.npz with images (N, 28, 28) uint8 and labels).")
@click.option("--datasets", default="N,U", show_default=True, help="Comma-separated: N (normal angles), U (uniform).")
@shared_options("mnist", MODELS, QUICK, FULL)
def main(data, datasets, models, quick, epochs, device, precision, threads, seed, resume, workdir, output):
    settings, train = run_settings(quick, epochs, seed, device, precision, QUICK, FULL)
    datasets, models = choose(datasets, DATASETS, "dataset"), choose(models, MODELS, "model")
    workdir = Path(workdir)
    sets = make_datasets(workdir, data, settings["n_train"], settings["n_test"], seed)
    rows = []
    for dataset in datasets:
        folder, (theta_true, origin_true) = sets[dataset]["folder"], sets[dataset]["truth"]
        for name in models:
            model, options, per_dataset = MODELS[name]
            options = {**options, **per_dataset.get(dataset, {}), "hidden": settings["hidden"]}
            analyses = {key: (folder / f"{split}.star", workdir / "analysis" / f"{dataset}_{name}_{split}")
                        for key, split in (("test", "test"), ("centred", "test_centred"))}
            result = train_and_analyze(folder / "train.star", workdir / "runs" / f"{dataset}_{name}", model, options,
                                       train, analyses, threads, resume)
            rows.append({"dataset": f"MNIST({dataset})", "model": name,
                         **evaluate(result, theta_true, origin_true, sets[dataset]["labels"])})
            print(f"done: MNIST({dataset}) {name} ({rows[-1]['train_seconds']:.0f} s training)", flush=True)
    report("mnist", quick, settings, {name: MODELS[name] for name in models}, rows,
           ["dataset", "model", "rotation_relative", "rotation_relative_uniform", "rotation_absolute",
            "translation_x_relative", "translation_y_relative", "translation_x_absolute", "translation_y_absolute",
            "clustering_accuracy", "clustering_accuracy_mean_std"], REFERENCE, output)

if __name__ == "__main__":
    main()
