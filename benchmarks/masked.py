"""Benchmark of the masked-latent group-action model (`emgroup train --model masked`).

Two datasets: MNIST digits with SO(2) (``../shared/data/mnist10k.npz``), and adenylate-kinase volumes (closed and
open, 32^3, random SO(3) orientations) written by `emgroup simulate --volumes` with SO(3). For each, models with
the same encoder-decoder are trained on pairs (x, T_g x) with rotation angles up to 90 degrees, by `emgroup train`
(a subprocess, as every benchmark trains; Adam 1e-3 at a constant rate, no validation split, the last epoch's
weights read back with ``load_run``):

* ``masked``: the paper's model (spatial action, learned mask, L_inv and L_const);
* ``masked-vector``: the vector action instead;
* ``no-mask``: every latent channel acted on (``--no-mask``);
* ``no-inv-const``: the learned mask without L_inv and L_const;
* ``autoencoder``: a plain autoencoder (reconstruction of x only).

Metrics on held-out data: the normalized MSE ``sum (D(Phi_g E x) - T_g x)^2 / sum (T_g x)^2`` of the predicted
T_g x at angles seen in training (<= 90 degrees) and unseen (90-180 degrees), and the accuracy of a logistic
regression (scikit-learn) on z_i (on z for the autoencoder) for the digit / the AdK state, fitted on the training
inputs in random orientations and scored on the held-out ones in random orientations; and how invariant that z_i
(z) is: ``sum |z_i(T_g x) - z_i(x)|^2 / sum |z_i(x)|^2`` over held-out inputs and g of the whole group (0: invariant).
The group elements are the model's own draws (``sample_group`` with a range of angles).

    python benchmarks/masked.py [--quick] [--datasets mnist adk] [--model JSON] [--variants masked autoencoder ...]
                                [--adk-snr inf] [--seed 0] [--output FILE.json]
"""

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common import RESULTS, SHARED_DATA, cli_options, emgroup, write_results
from emgroup.data.stack import Stack, write_particles
from emgroup.io.mrc import write_volume
from emgroup.io.star import optics_table, write_star
from emgroup.models.masked import MaskedGroupAction
from emgroup.train.checkpoint import load_run

TRAIN_ANGLE = 90.0  # degrees: the largest rotation seen in training

VARIANTS = {
    "masked": {},
    "masked-vector": {"action": "vector"},
    "no-mask": {"mask": False},
    "no-inv-const": {"inv_weight": 0.0, "const_weight": 0.0},
    "autoencoder": {"mask": False, "transform_weight": 0.0, "inv_weight": 0.0, "const_weight": 0.0},
}


def mnist(n_train: int, n_test: int):
    """Digits (n, 28, 28) in [0, 1] (background 0, like the rotation's padding) and labels."""
    data = np.load(SHARED_DATA / "mnist10k.npz")
    images = torch.from_numpy(data["images"][:n_train + n_test].astype(np.float32) / 255.0)
    labels = data["labels"][:n_train + n_test].astype(int)
    return (images[:n_train], labels[:n_train]), (images[n_train:], labels[n_train:])


def adk_volumes(n: int, seed: int, snr: float, folder: Path):
    """n closed/open AdK volumes (n, 32, 32, 32) from `emgroup simulate --volumes` (white noise at ``snr``), scaled
    to max 1, and states."""
    emgroup("simulate", "-o", folder, "--volumes", "-n", n, "--box", 32, "--apix", 3.5, "--pdb",
            SHARED_DATA / "adk_closed.pdb", "--pdb2", SHARED_DATA / "adk_open.pdb", "--conformations", 2, "--snr", snr,
            "--seed", seed, "--no-progress")
    stack = Stack.open(folder / "volumes.star", ndim=3)
    volumes = torch.from_numpy(stack.images())
    labels = stack.meta["rlnEmgroupTrueConformation"].to_numpy().round().astype(int)
    half = n * 4 // 5
    volumes = volumes / volumes.amax()
    return (volumes[:half], labels[:half]), (volumes[half:], labels[half:])


def write_training_data(folder: Path, data: torch.Tensor) -> Path:
    """``data`` (n, D, D) images or (n, D, D, D) volumes as `emgroup train` reads them: ``FOLDER/train.star``
    with an MRC stack of the images, or one MRC file per volume (named relative to the STAR's folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    star, box = folder / "train.star", data.shape[-1]
    if data.dim() == 3:
        return write_particles(star, [data.numpy()], pd.DataFrame(index=range(len(data))), optics_table(1.0, box), 1.0)
    names = [f"{i + 1:06d}.mrc" for i in range(len(data))]
    for name, volume in zip(names, data.numpy()):
        write_volume(folder / name, volume, 1.0)
    write_star(star, pd.DataFrame({"rlnImageName": names, "rlnOpticsGroup": 1}),
               optics_table(1.0, box).assign(rlnImageDimensionality=3))
    return star


def train(star: Path, rundir: Path, config: dict, epochs: int, batch: int, seed: int) -> MaskedGroupAction:
    """`emgroup train STAR --model masked` with the model options ``config``: Adam 1e-3 (the paper's settings)
    held constant (plateau and early stop beyond the last epoch), every particle in training; the model of the last
    epoch, in eval mode."""
    emgroup("train", star, "-o", rundir, "--model", "masked", *cli_options(config), "--epochs", epochs,
            "--batch-size", batch, "--lr", 1e-3, "--seed", seed, "--val-fraction", 0, "--plateau-patience", epochs,
            "--early-stop", epochs, "--device", "cpu", "--force", "--no-progress", threads=1)
    return load_run(rundir, "last")[0]


@torch.no_grad()
def prediction_error(model, data, low, high, seed) -> float:
    """Normalized MSE of the predicted T_g x over ``data`` at angles in [low, high] degrees."""
    g = model.sample_group(len(data), between=(low, high), generator=torch.Generator().manual_seed(seed))
    x = data * model.support
    target = model.transform(x, g)
    return float(((model.predict(x, g) - target) ** 2).sum() / (target ** 2).sum())


@torch.no_grad()
def features(model, data, seed: int, invariant: bool) -> np.ndarray:
    """z_i (or z) of the inputs turned by random group elements (the whole group)."""
    g = model.sample_group(len(data), between=(0.0, 180.0), generator=torch.Generator().manual_seed(seed))
    turned = model.transform(data * model.support, g)
    encoding = model.encode(turned)
    z = encoding["z_i" if invariant else "z"].numpy()
    if invariant:  # only the invariant channels: drop the zeroed ones
        z = z[:, np.abs(z).sum(0) > 0]
    return z


@torch.no_grad()
def invariance_error(model, data, seed: int, invariant: bool) -> float:
    """Relative change of z_i (z) when the inputs turn by group elements of the whole group (0: invariant)."""
    x = data * model.support
    g = model.sample_group(len(x), between=(0.0, 180.0), generator=torch.Generator().manual_seed(seed))
    key = "z_i" if invariant else "z"
    before, after = model.encode(x)[key], model.encode(model.transform(x, g))[key]
    return float((after - before).square().sum() / before.square().sum())


def classifier_accuracy(model, train_set, test_set, seed: int, invariant: bool) -> float:
    x_train, x_test = features(model, train_set[0], seed, invariant), features(model, test_set[0], seed + 1,
                                                                                  invariant)
    if x_train.shape[1] == 0:
        return float("nan")  # no invariant channel
    fit = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, train_set[1])
    return float(fit.score(x_test, test_set[1]))


def run_dataset(name, train_set, test_set, base, epochs, batch, seed, variants, folder: Path):
    """Train each of ``variants`` (the model options ``base`` and the variant's) on ``train_set`` in
    ``folder/NAME`` and score it on ``test_set``: one row per model."""
    rows, seen = [], []
    star = write_training_data(folder / name, train_set[0])
    for variant in variants:
        options = VARIANTS[variant]
        config = {**base, **options, "max_angle": TRAIN_ANGLE}
        if config in seen:  # e.g. masked-vector when the base model already has the vector action
            continue
        seen.append(config)
        start = time.perf_counter()
        model = train(star, folder / name / variant, config, epochs, batch, seed)
        mask = model.channel_mask().detach()
        invariant = options.get("mask", True)  # z_i where there is a mask, else z
        row = {"dataset": name, "model": variant, "variant_channels": int(mask.sum()), "channels": len(mask),
               "nmse_seen": prediction_error(model, test_set[0], 0.0, TRAIN_ANGLE, seed + 7),
               "nmse_unseen": prediction_error(model, test_set[0], TRAIN_ANGLE, 180.0, seed + 8),
               "classifier_on": "z_i" if invariant else "z",
               "accuracy": classifier_accuracy(model, train_set, test_set, seed + 9, invariant),
               "invariance_error": invariance_error(model, test_set[0], seed + 10, invariant),
               "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def _line(row) -> str:
    return (f"{row['dataset']:<6} {row['model']:<14} {row['variant_channels']:>3}/{row['channels']:<3} "
            f"{row['nmse_seen']:>9.3f} {row['nmse_unseen']:>11.3f} {row['classifier_on']:>4} "
            f"{row['accuracy']:>8.3f} {row['invariance_error']:>9.3f} {row['seconds']:>7.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and few epochs (a few CPU minutes)")
    parser.add_argument("--datasets", nargs="+", choices=["mnist", "adk"], default=["mnist", "adk"],
                        help="MNIST with SO(2) and/or AdK volumes with SO(3) (3-D convolutions: the slow part on "
                        "a CPU)")
    parser.add_argument("--model", type=json.loads, default={}, metavar="JSON",
                        help="model options shared by every variant, over the protocol's, e.g. "
                        "'{\"action\": \"vector\", \"latent_channels\": 256}' (a variant that repeats another "
                        "is skipped)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="the models to train (default: all)")
    parser.add_argument("--adk-snr", type=float, default=float("inf"),
                        help="signal / noise variance of the AdK volumes (default: inf, noise-free)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON file [default: benchmarks/results/masked.json, masked_quick.json with --quick]")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quick = args.quick
    output = args.output or RESULTS / ("masked_quick.json" if quick else "masked.json")
    settings = {"mnist_train": 2000 if quick else 8000, "mnist_test": 500 if quick else 2000,
                "mnist_epochs": 10 if quick else 24, "mnist_batch": 64, "adk_volumes": 160 if quick else 600,
                "adk_epochs": 19 if quick else 100, "adk_batch": 16 if quick else 32}
    mnist_model = {"width": 16, "latent_channels": 16, "output": "tanh"} if quick else {"output": "tanh"}
    mnist_model |= args.model
    adk_model = {"group": "SO3", "width": 4, "latent_channels": 8} if quick else {"group": "SO3", "width": 8,
                                                                                  "latent_channels": 16}
    adk_model |= args.model
    print(f"{'data':<6} {'model':<14} {'variant':>7} {'nMSE seen':>9} {'nMSE unseen':>11} {'on':>4} "
          f"{'accuracy':>8} {'change':>9} {'seconds':>7}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "mnist" in args.datasets:
            rows += run_dataset("mnist", *mnist(settings["mnist_train"], settings["mnist_test"]), mnist_model,
                                settings["mnist_epochs"], settings["mnist_batch"], args.seed, args.variants, folder)
        if "adk" in args.datasets:
            train_set, test_set = adk_volumes(settings["adk_volumes"], args.seed, args.adk_snr, folder / "simulated")
            rows += run_dataset("adk", train_set, test_set, adk_model, settings["adk_epochs"], settings["adk_batch"],
                                args.seed, args.variants, folder)
    write_results(output, {"settings": {**settings, "mnist_model": mnist_model, "adk_model": adk_model,
                                        "train_angle_deg": TRAIN_ANGLE, "seed": args.seed,
                                        "adk_snr": args.adk_snr if math.isfinite(args.adk_snr) else None,
                                        "quick": quick, "torch_threads": 1, "datasets": args.datasets},
                           "results": rows})
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
