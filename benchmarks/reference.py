"""The public reference code beside ours, on our data, at our budget, scored with our metrics (issue 15, part 4).

tbepler/spatial-VAE and SMLC-NYSBC/TARGET-VAE are not part of emgroup and none of their code is copied here: pass
clones of them (``--spatial-vae-dir``, ``--target-vae-dir``; their commits go into the JSON). Their own training
scripts run unmodified in a child process of this script; a second child loads the encoder they saved and runs it
on the particles; this script converts what that encoder infers to our pose convention and scores it as our rows
are scored. ``--ours`` also trains and scores our rows of the same settings through the `emgroup` CLI.

Data, made by our benchmarks' own functions with the same seed:

* ``mnist-U``: the quick MNIST(U) protocol of ``mnist.py`` (2,000 training / 500 test digits on a 50x50 canvas,
  uniform angles, shifts N(0, 5^2) px), scored on the test digits by ``mnist.evaluate`` (relative and absolute pose
  correlations, 10 Ward clusters of z and of (z, z_std)); the public scripts get the images as .npy stacks;
* ``mix-snr0.3``: the yardstick's closed/open adenylate-kinase set of ``cryoem.py`` (5,000 preprocessed particles
  of 40x40 at 2.5 Å/px, uniform rotation, shifts 1.5 px, astigmatic CTF, SNR 0.3), scored on every particle by
  ``cryoem.score`` (2 Gaussian-mixture clusters of z against the state, as `analyze --clusters 2` makes them;
  rotation in both forms; shift per axis); the public scripts get .npy stacks and CTF tables in their format
  (one line per particle: defocus (µm, the mean of U and V), Cs (mm), voltage (kV), pixel size (Å), B-factor,
  amplitude contrast (%), defocus difference (µm), astigmatism angle (degrees)).

Both codes train on the same particles: the train/val split `emgroup train` makes (``split_indices``), the val
particles being the public scripts' test set (TARGET-VAE halves its learning rate on a plateau of their ELBO and
keeps the encoder of the best one, as our runs keep best.pt; spatial-VAE keeps the last epoch). Each row takes
our row's model size, epochs, batch size, learning rate and seed (``mnist.MODELS`` / ``mnist.QUICK``,
``cryoem.MODELS``, our defaults otherwise):

* ``spatial``: spatial-VAE's ``train_particles.py`` (its ``train_mnist.py`` is fixed to 28x28 images): ``-z`` =
  our ``z_dim``, ``--p/q-hidden-dim`` = our ``hidden``, ``--p/q-num-layers`` = our ``layers``, ``--dx-scale`` =
  our ``shift_sigma`` in their units, ``--theta-prior pi`` (their KL without a prior mean = our ``uniform``); on
  the particles with the CTF tables and the paper's recipe for particles (issue 15, section 2; their README trains
  particles with ``--augment-rotation``), ``--augment-rotation --z-delay 2``. Its likelihood is a Gaussian of unit
  variance (ours: Bernoulli on MNIST, one learned variance on particles).
* ``target-P8``: TARGET-VAE's ``train_mnist.py --dataset mnist-U`` (Bernoulli, as ours) and ``train_particles.py``
  (unit-variance Gaussian, CTF tables) with ``--groupconv 8 --t-inf attention --r-inf attention+offsets
  --fourier-expansion``, our kernel size and padding, ``--encoder-kernel-number`` = our ``channels``,
  ``--generator-hidden-dim``/``--generator-num-layers`` = our ``hidden``/``generator_layers``. Its translation
  prior is fixed at N(0, 0.1^2) in its units (2.45 px on 50 px, 1.95 px on 40 px; ours 5 and 2.5 px), and its
  Fourier expansion has 1,024 features whatever the width (ours: ``fourier_features``, 512 in ``cryoem.MODELS``).

The public code runs in fp32 (it has no other precision), ours in that of our row (``cryoem.MODELS``: ``auto``,
bf16 on CPUs with bf16 units and fp32 elsewhere; ``mnist.py``: fp32). ``epoch_seconds`` is the mean wall time of a training pass for both codes (without the
validation pass); ``train_seconds`` the whole training command's.

Reading their encoders: spatial-VAE's inference network gives means (theta, dx/dx_scale, z); TARGET-VAE's
``clustering_particles.get_latent`` gives theta and z of the most probable (translation, rotation) cell and the
translation expected under q(t).

Conventions. Their pixel coordinates are ``u = S (x + delta)``, with x our pixel offsets from ``D // 2`` (x right,
y down), ``S = diag(1, -1) / h``, ``h = (D - 1) / 2`` (``np.linspace(-1, 1, D)`` across, ``np.linspace(1, -1, D)``
down) and ``delta = D // 2 - h`` (1/2 px on even boxes). spatial-VAE draws ``image(u) = canonical(R(phi) u + d)``,
TARGET-VAE ``image(u) = canonical(R(phi) (u - d))``. As ``R(phi) S = S R(-phi)``, in ours
(``image(x) = canonical(R(theta) x + shift)``, shift in px) that is ``theta = -phi`` and
``shift = R(theta) delta + S^-1 d`` (spatial-VAE) or ``shift = R(theta) (delta - S^-1 d)`` (TARGET-VAE): the
angle changes sign and y is flipped. Every run checks this against the public code at hand
(``convention_error_px``, :func:`convention`: their decoder, fed poses through their own reading of the encoder,
draws each pixel where the conversion says, to 1e-4 px; with ``theta = +phi`` it would be off by up to 40 px,
without the y flip by 10 px) and stops if it does not hold.

Shims (in the child process, their files untouched): modules their scripts import but do not use on these paths
(torchvision, seaborn, astropy) become placeholders when not installed; ``ReduceLROnPlateau`` accepts and ignores
the ``verbose`` argument torch 2.13 removed (TARGET-VAE); ``Tensor.to``/``Module.to`` of a negative int go to the
CPU (TARGET-VAE's ``train_particles.py`` passes its ``-d`` integer straight to ``.to``, and ``-1`` is its CPU);
torch, numpy and random are seeded (neither script seeds); ``train_epoch`` is timed. The child runs with the
malloc settings the `emgroup` command gives itself (``MALLOC_ENV``), so both codes are timed alike.

    python benchmarks/reference.py --spatial-vae-dir ../ref/spatial-vae --target-vae-dir ../ref/target-vae --ours
    python benchmarks/reference.py ... --sets mix-snr0.3 --models spatial -n 200 --epochs 1 --output /tmp/x.json
"""

import functools
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import click
import numpy as np
import pandas as pd
import torch

import cryoem
import mnist
from common import REPO, RESULTS, SHARED_DATA, choose, print_table, run_settings, train_and_analyze, write_results
from emgroup.analysis.clustering import cluster_latents
from emgroup.analysis.metrics import clustering_accuracy
from emgroup.cli.main import MALLOC_ENV
from emgroup.data.ctf import has_ctf, stack_ctf_parameters
from emgroup.data.poses import relion_from_model, rotate_2d
from emgroup.data.stack import Stack
from emgroup.models.grids import coordinate_grid, pixel_size
from emgroup.models.registry import model_class
from emgroup.models.target_vae import KERNEL_FRACTION, PADDING_FRACTION
from emgroup.train.data import split_indices
from emgroup.train.checkpoint import TrainSettings

SETS = ("mnist-U", "mix-snr0.3")
#: public row -> (repository option, our row in mnist.MODELS, our row in cryoem.MODELS)
ROWS = {"spatial": ("spatial_vae_dir", "spatial", "spatial"),
        "target-P8": ("target_vae_dir", "target-P8-z2", "target-P8")}
#: spatial-VAE's recipe for particles with uniform in-plane angles (issue 15, section 2)
SPATIAL_PARTICLE_RECIPE = ["--augment-rotation", "--z-delay", 2]
CHILD = "--child"  # first argument of the child process that runs the public code
#: modules the public scripts import but do not use on the paths run here
UNUSED_IMPORTS = ("torchvision", "seaborn", "astropy", "astropy.stats")
MNIST_COLUMNS = ["data", "model", "code", "budget", "rotation_relative", "rotation_relative_uniform",
                 "rotation_absolute_uniform", "translation_x_relative", "translation_y_relative",
                 "translation_x_absolute", "translation_y_absolute", "clustering_accuracy",
                 "clustering_accuracy_mean_std", "epoch_seconds"]
CRYOEM_COLUMNS = ["data", "model", "code", "budget", "state_accuracy", "rotation_uniform", "rotation_published",
                  "shift_x", "shift_y", "epoch_seconds", "train_seconds"]


# ---- our rows' settings -------------------------------------------------------------------------------------------

def our_row(row: str, data: str, epochs, seed: int) -> tuple[str, dict, dict]:
    """(registered model, model options, `emgroup train` options) of our row that the public ``row`` matches."""
    if data == "mnist-U":
        model, options, per_dataset = mnist.MODELS[ROWS[row][1]]
        _, train = run_settings(True, epochs, seed, "auto", "fp32", mnist.QUICK, mnist.FULL)
        return model, {**options, **per_dataset.get("U", {}), "hidden": mnist.QUICK["hidden"]}, train
    model, options, train = cryoem.MODELS[ROWS[row][2]]
    return model, options, {**train, "epochs": epochs or train["epochs"]}


def their_units(box: int) -> float:
    """Pixels per unit of the public codes' coordinates (``np.linspace(-1, 1, D)``)."""
    return (box - 1) / 2


def public_command(row: str, data: str, config, train: dict, box: int, run: Path, ctf: bool) -> tuple[str, list]:
    """(script, arguments) of the public code for ``row`` on ``data`` with our model's ``config`` and our `emgroup
    train` options ``train`` (our defaults for those not given), run in the folder of the .npy stacks."""
    epochs = train["epochs"]
    budget = ["--num-epochs", epochs, "--minibatch-size", train.get("batch_size", TrainSettings.batch_size),
              "-l", train.get("lr", TrainSettings.lr), "-z", config.z_dim, "-d", -1]
    tables = ["--ctf-train", "train.ctf", "--ctf-test", "val.ctf"] if ctf else []
    if row == "spatial":
        assert config.theta_prior == "uniform", "spatial-VAE's particle script has only the KL without a prior mean"
        recipe = SPATIAL_PARTICLE_RECIPE if data != "mnist-U" else []
        return "train_particles.py", [
            "train.npy", "val.npy", *tables, *budget, "--p-hidden-dim", config.hidden, "--q-hidden-dim", config.hidden,
            "--p-num-layers", config.layers, "--q-num-layers", config.layers, "--theta-prior", np.pi,
            "--dx-scale", config.shift_sigma / their_units(box), *recipe, "--save-prefix", run / "spatial_vae",
            "--save-interval", epochs]
    assert config.rotation_prior == "uniform", "the public particle script has a uniform prior over rotations"
    kernel = config.kernel_size or round(KERNEL_FRACTION * box)
    padding = config.padding if config.padding >= 0 else round(PADDING_FRACTION * box)
    network = ["--t-inf", "attention", "--r-inf", "attention+offsets", "--groupconv", config.group[1:],
               "--encoder-kernel-number", config.channels, "--encoder-kernel-size", kernel, "--encoder-padding",
               padding, "--fourier-expansion", "--generator-hidden-dim", config.hidden, "--generator-num-layers",
               config.generator_layers, "--log-root", run / "logs", "--save-interval", epochs, *budget]
    if data == "mnist-U":
        return "train_mnist.py", ["--dataset", "mnist-U", "--image-dim", box, *network]
    return "train_particles.py", ["--train-path", "train.npy", "--test-path", "val.npy", *tables, *network]


# ---- inputs in their formats --------------------------------------------------------------------------------------

def write_inputs(folder: Path, stack: Stack, seed: int, mnist_scale: bool) -> tuple[np.ndarray, bool]:
    """The train/val split of ``stack`` (as `emgroup train` makes it) as ``folder/{train,val}.npy`` float32
    (N, D, D), with ``{train,val}.ctf`` tables when the particles carry a CTF, and for MNIST also as TARGET-VAE's
    ``data/mnist_U/images_{train,test}.npy`` (pixels x 255: its script divides by 255). Returns (the training
    particles' indices, whether CTF tables were written)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = stack.images()
    train, val = split_indices(stack, None, seed)
    ctf = has_ctf(stack.meta)
    for name, rows in (("train", train), ("val", val)):
        np.save(folder / f"{name}.npy", images[rows])
        if ctf:
            write_ctf_table(folder / f"{name}.ctf", stack_ctf_parameters(stack, rows))
    if mnist_scale:
        (folder / "data" / "mnist_U").mkdir(parents=True, exist_ok=True)
        for name, rows in (("train", train), ("test", val)):
            np.save(folder / "data" / "mnist_U" / f"images_{name}.npy", images[rows] * 255)
    return train, ctf


def write_ctf_table(path: Path, parameters: np.ndarray) -> None:
    """The public codes' CTF table (their ``ctf.parse_ctf``) from (N, 9) rows of ``emgroup.ctf.CTF_PARAMETERS``.
    They read one defocus (the mean of U and V here) and no phase shift."""
    u, v, angle, voltage, cs, amplitude, bfactor, _, apix = parameters.T
    table = np.column_stack([(u + v) / 2e4, cs, voltage, apix, bfactor, amplitude * 100, (u - v) / 1e4, angle])
    np.savetxt(path, table, fmt="%.6g")


# ---- running the public code --------------------------------------------------------------------------------------

def run_child(log: Path, cwd: Path, threads: int, *argv) -> None:
    """``python reference.py --child ARGV`` in ``cwd`` on ``threads`` OMP threads with ``MALLOC_ENV``, its output
    appended to ``log``; stops with the log's tail when it fails."""
    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": str(threads), "MPLBACKEND": "Agg"}
    with open(log, "a") as out:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), CHILD, *map(str, argv)], cwd=cwd,
                              env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"the public code failed ({done.returncode}); the end of {log}:\n{log.read_text()[-3000:]}")


def train_public(repo: Path, script: str, args: list, cwd: Path, run: Path, seed: int, threads: int) -> dict:
    """Train with the public ``script``; returns its command, wall time and the seconds of each training pass."""
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    start = time.perf_counter()
    run_child(run / "log.txt", cwd, threads, "train", repo, seed, run / "epochs.json", script, *args)
    epochs = json.loads((run / "epochs.json").read_text())
    return {"command": " ".join(map(str, ["python", script, *args])), "train_seconds": time.perf_counter() - start,
            "epoch_seconds": float(np.mean(epochs)), "epoch_seconds_each": epochs}


def encode_public(repo: Path, row: str, model_file: Path, images: np.ndarray, run: Path, name: str, seed: int,
                  threads: int) -> dict:
    """The public encoder of ``row`` on ``images`` (N, D, D): what the child wrote, in their units."""
    stack, out = run / f"{name}_images.npy", run / f"{name}_encoding.npz"
    np.save(stack, images.astype(np.float32))
    run_child(run / "log.txt", run, threads, "encode", repo, seed, row.split("-")[0], model_file, stack, out)
    with np.load(out) as raw:
        return dict(raw)


def saved_encoder(row: str, run: Path) -> Path:
    """The encoder the public script saved: spatial-VAE's last epoch, TARGET-VAE's best test ELBO."""
    pattern = "spatial_vae_inference_epoch*.sav" if row == "spatial" else "logs/*/inference.sav"
    return sorted(run.glob(pattern))[-1]


def our_encoding(row: str, raw: dict, box: int, dx_scale: float) -> dict[str, np.ndarray]:
    """Their encoder's output -> our pose convention (module docstring): theta (rad), shift (px, x y), z, z_std."""
    units = their_units(box)
    delta = np.full(2, box // 2 - units)
    if row == "spatial":
        mu, std = raw["mu"], np.exp(raw["logstd"])
        phi, d, z, z_std = mu[:, 0], mu[:, 1:3] * dx_scale, mu[:, 3:], std[:, 3:]
    else:
        z_dim = raw["z_content"].shape[1] // 2
        phi, d, z, z_std = raw["theta"][:, 0], raw["dx"], raw["z_content"][:, :z_dim], raw["z_content"][:, z_dim:]
    d_px = np.column_stack([d[:, 0], -d[:, 1]]) * units  # S^-1 d
    theta = -phi
    shift = rotate_2d(theta, delta) + d_px if row == "spatial" else rotate_2d(theta, delta - d_px)
    return {"theta": theta, "shift": shift, "z": z, "z_std": z_std}


def convention_error(repo: Path, row: str, run: Path, threads: int, box: int = 40) -> float:
    """Largest distance (px) between where the public decoder draws a pixel and where :func:`our_encoding` of what
    the public code reads from its encoder says it does (:func:`convention`, random poses): 0 up to rounding when
    the conversion is right."""
    out = run / "convention.npz"
    run_child(run / "log.txt", run, threads, "convention", repo, 0, row.split("-")[0], box, out)
    with np.load(out) as raw:
        raw = dict(raw)
    pose = our_encoding(row, raw, box, 0.1)  # the decoder ran with spatial-VAE's default --dx-scale
    pixels = (coordinate_grid(box) / pixel_size(box)).numpy()
    drawn = rotate_2d(pose["theta"][:, None], pixels[None]) + pose["shift"][:, None]  # canonical point, ours (px)
    theirs = np.stack([drawn[..., 0], -drawn[..., 1]], -1) / their_units(box)
    return float(np.abs(raw["x"] - theirs).max() * their_units(box))


def public_row(row: str, data: str, repo: Path, inputs: Path, run: Path, box: int, ctf: bool, to_encode: dict,
               epochs, seed: int, threads: int) -> tuple[dict, dict]:
    """Train the public code for ``row`` and encode each ``name -> images`` of ``to_encode``; returns (the row's
    record, ``name -> our encoding``)."""
    model, options, train = our_row(row, data, epochs, seed)
    config = model_class(model).Config(**options)
    script, args = public_command(row, data, config, train, box, run, ctf)
    record = {"data": data, "model": row, "code": "public", "budget": f"{train['epochs']} epochs",
              **train_public(repo, script, args, inputs, run, seed, threads)}
    record["convention_error_px"] = convention_error(repo, row, run, threads)
    if record["convention_error_px"] > 1e-3:
        sys.exit(f"{repo}: its decoder does not draw images as the conversion to our pose convention assumes "
                 f"(off by up to {record['convention_error_px']:.3g} px)")
    encoder = saved_encoder(row, run)
    record["checkpoint"] = str(encoder.relative_to(run))
    encodings = {name: our_encoding(row, encode_public(repo, row, encoder, images, run, name, seed, threads), box,
                                    config.shift_sigma / their_units(box))
                 for name, images in to_encode.items()}
    return record, encodings


# ---- the two data sets --------------------------------------------------------------------------------------------

def mnist_rows(rows: list[str], repos: dict, ours: bool, workdir: Path, n_train: int, n_test: int, epochs,
               seed: int, threads: int) -> list[dict]:
    """Public (and our) rows on the quick MNIST(U) protocol of mnist.py."""
    dataset = mnist.make_datasets(workdir, SHARED_DATA / "mnist10k.npz", n_train, n_test, seed)["U"]
    folder, (theta_true, origin_true), labels = dataset["folder"], dataset["truth"], dataset["labels"]
    stack = Stack.open(folder / "train.star")
    inputs = workdir / "public" / "mnist-U"
    train_rows, _ = write_inputs(inputs, stack, seed, mnist_scale=True)
    tests = {name: Stack.open(folder / f"{split}.star").images()
             for name, split in (("test", "test"), ("centred", "test_centred"))}
    out = []
    for row in rows:
        record, encodings = public_row(row, "mnist-U", repos[row], inputs, workdir / "public" / f"mnist-U_{row}",
                                       stack.box, False, tests, epochs, seed, threads)
        accuracy = clustering_accuracy(labels, cluster_latents(encodings["test"]["z"], 10, "agglomerative").labels)
        result = {name: {"encoding": encoding, "metrics": {"clustering_accuracy": accuracy}}
                  for name, encoding in encodings.items()}
        out.append({**record, **mnist.evaluate({**result, "train_seconds": record["train_seconds"]}, theta_true,
                                                origin_true, labels)})
        if ours:
            model, options, train = our_row(row, "mnist-U", epochs, seed)
            rundir = workdir / "runs" / f"mnist-U_{row}"
            analyses = {key: (folder / f"{split}.star", workdir / "analysis" / f"mnist-U_{row}_{split}")
                        for key, split in (("test", "test"), ("centred", "test_centred"))}
            result = train_and_analyze(folder / "train.star", rundir, model, options, train, analyses, threads)
            out.append({"data": "mnist-U", "model": row, "code": "emgroup", "budget": f"{train['epochs']} epochs",
                        **mnist.evaluate(result, theta_true, origin_true, labels),
                        "epoch_seconds": our_epoch_seconds(rundir, len(train_rows))})
    return out


def cryoem_rows(rows: list[str], repos: dict, ours: bool, workdir: Path, n_particles: int, epochs, seed: int,
                threads: int) -> list[dict]:
    """Public (and our) rows on the yardstick's mix-snr0.3 set of cryoem.py."""
    kind, snr = cryoem.SETS["mix-snr0.3"]
    folder = workdir / "mix-snr0.3"
    particles = cryoem.simulate(folder, kind, snr, n_particles, seed, threads)
    stack = Stack.open(particles)
    inputs = workdir / "public" / "mix-snr0.3"
    train_rows, ctf = write_inputs(inputs, stack, seed, mnist_scale=False)
    out = []
    for row in rows:
        record, encodings = public_row(row, "mix-snr0.3", repos[row], inputs, workdir / "public" /
                                       f"mix-snr0.3_{row}", stack.box, ctf, {"all": stack.images()}, epochs, seed,
                                       threads)
        scored = as_analyzed(stack.meta, encodings["all"], stack.apix, seed)
        out.append({**record, **cryoem.score(kind, scored, cryoem.truth(scored), seed)})
        if ours:
            model, options, train = our_row(row, "mix-snr0.3", epochs, seed)
            name = ROWS[row][2]
            result = cryoem.run_model(name, model, options, train, particles, folder, kind, seed, threads)
            out.append({"data": "mix-snr0.3", "model": row, "code": "emgroup", **result,
                        "epoch_seconds": our_epoch_seconds(folder / "runs" / name, len(train_rows))})
    return out


def as_analyzed(meta: pd.DataFrame, encoding: dict, apix: float, seed: int) -> pd.DataFrame:
    """The particle table as `emgroup analyze` writes it for ``cryoem.score``: the input pose kept as
    rlnEmgroupInput*, the public model's pose as rlnAnglePsi/rlnOriginX/YAngst and 2 GMM clusters of its z as
    rlnClassNumber."""
    kept = {f"rlnEmgroupInput{label[3:]}": meta[label] for label in
            ("rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst")}
    psi, origin_x, origin_y = relion_from_model(encoding["theta"], encoding["shift"], apix)
    classes = cluster_latents(encoding["z"], 2, "gmm", seed=seed).labels
    return meta.assign(**kept, rlnAnglePsi=psi, rlnOriginXAngst=origin_x, rlnOriginYAngst=origin_y,
                       rlnClassNumber=classes)


def our_epoch_seconds(rundir: Path, n_train: int) -> float:
    """Mean seconds of our training passes (metrics.csv's particles/s), without the validation pass."""
    return float(np.mean(n_train / pd.read_csv(rundir / "metrics.csv")["particles_per_s"]))


# ---- the child process: the public code, shimmed ------------------------------------------------------------------

def child(mode: str, repo: str, seed: str, *args: str) -> None:
    """``train TIMING SCRIPT ARGS...``: run the public SCRIPT's main() with ARGS, writing the seconds of each of its
    training passes to TIMING; ``encode KIND MODEL IMAGES OUT``: the saved encoder MODEL of spatial-VAE or
    TARGET-VAE (KIND spatial/target) on IMAGES (.npy, (N, D, D)), its outputs saved in OUT (.npz); ``convention
    KIND BOX OUT``: :func:`convention`."""
    sys.path.insert(0, repo)
    shim()
    for seeded in (torch.manual_seed, np.random.seed, random.seed):
        seeded(int(seed))
    {"train": functools.partial(train_script, Path(repo)), "encode": encode,
     "convention": functools.partial(convention, Path(repo))}[mode](*args)


def shim() -> None:
    """What the public code needs from this torch and these packages (module docstring)."""
    absent = {name for name in UNUSED_IMPORTS if "." not in name and importlib.util.find_spec(name) is None}
    for name in UNUSED_IMPORTS:
        if name.split(".")[0] in absent:
            module = types.ModuleType(name)
            module.__getattr__ = functools.partial(_unavailable, name)
            sys.modules[name] = module

    class ReduceLROnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
        def __init__(self, *args, verbose=False, **kwargs):
            super().__init__(*args, **kwargs)

    torch.optim.lr_scheduler.ReduceLROnPlateau = ReduceLROnPlateau
    torch.Tensor.to = _negative_index_is_cpu(torch.Tensor.to)
    torch.nn.Module.to = _negative_index_is_cpu(torch.nn.Module.to)


def _unavailable(module: str, name: str):
    if name.startswith("__"):
        raise AttributeError(name)

    def missing(*args, **kwargs):
        raise RuntimeError(f"{module}.{name} is not installed (a placeholder of benchmarks/reference.py)")
    return missing


def _negative_index_is_cpu(to):
    @functools.wraps(to)
    def wrapped(self, *args, **kwargs):
        if args and type(args[0]) is int and args[0] < 0:
            args = ("cpu", *args[1:])
        return to(self, *args, **kwargs)
    return wrapped


def train_script(repo: Path, timing: str, script: str, *args: str) -> None:
    module = load_script(repo, script)
    seconds, train_epoch = [], module.train_epoch

    def timed(*a, **k):
        start = time.perf_counter()
        result = train_epoch(*a, **k)
        seconds.append(time.perf_counter() - start)
        return result

    module.train_epoch = timed
    sys.argv = [script, *args]
    module.main()
    Path(timing).write_text(json.dumps(seconds))


def their_grid(box: int) -> torch.Tensor:
    """(D * D, 2) coordinates of the pixels as both public codes lay them out (x across, y up, in [-1, 1]), which
    their decoders transform and of which ``get_latent`` reads the spacing of the translation grid."""
    across, up = np.meshgrid(np.linspace(-1, 1, box), np.linspace(1, -1, box))
    return torch.from_numpy(np.stack([across.ravel(), up.ravel()], 1)).float()


def load_script(repo: Path, script: str) -> types.ModuleType:
    """The public ``script`` as a module (its ``main()`` not run)."""
    spec = importlib.util.spec_from_file_location("public_script", repo / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def convention(repo: Path, kind: str, box: str, out: str, n: int = 8) -> None:
    """The coordinates at which the public decoder (``eval_minibatch`` of its ``train_particles.py``; their
    ``train_mnist.py`` transforms alike) draws each pixel of an image, for ``n`` random poses read as our
    :func:`encode` reads them (spatial-VAE: the inference network's means; TARGET-VAE: ``get_latent``), from stand-in
    networks: an encoder that outputs those poses with negligible spread, a generator that records its input.
    Saves the encoder's output (what :func:`our_encoding` converts) and the coordinates ``x`` (n, D * D, 2)."""
    box, rng = int(box), np.random.default_rng(0)
    phi = torch.tensor(rng.uniform(-np.pi, np.pi, n), dtype=torch.float32)
    grid, blank = their_grid(box), torch.zeros(n, 1, box, box)
    drawn = {}

    def generator(x, z):
        drawn["x"] = x.detach().clone()
        return torch.zeros(*x.shape[:2], 1)

    if kind == "spatial":
        mu = torch.cat([phi[:, None], torch.tensor(rng.normal(0, 1, (n, 3)), dtype=torch.float32)], 1)
        reading = {"mu": mu, "logstd": torch.full_like(mu, -30.0)}
        load_script(repo, "train_particles.py").eval_minibatch(grid, blank.view(n, -1), None, None, generator,
                                                              lambda y: (mu, reading["logstd"]))
    else:
        from clustering_particles import get_latent
        rotations, cells = 8, 2 * (box // 4) + 1  # an odd translation grid, as on our boxes
        attn = torch.full((n, rotations, cells, cells), -100.0)
        attn.view(n, -1)[torch.arange(n), torch.from_numpy(rng.integers(0, attn[0].numel(), n))] = 100.0
        theta = torch.stack([phi[:, None, None, None].expand_as(attn), torch.full_like(attn, -30.0)], 1)
        z = torch.stack([torch.zeros_like(attn), torch.full_like(attn, -30.0)], 1)
        offsets = torch.arange(rotations) * 2 * np.pi / rotations

        def encoder(y, device):
            return (attn, torch.log_softmax(attn.view(n, -1), 1).view_as(attn), torch.zeros(rotations, 1, 1),
                    torch.softmax(attn.view(n, -1), 1).view_as(attn), offsets, theta, z)

        z_content, theta_mu, dx = get_latent(grid, blank, encoder, "attention", "attention+offsets", "cpu")
        reading = {"z_content": z_content, "theta": theta_mu, "dx": dx}
        load_script(repo, "train_particles.py").eval_minibatch(grid, blank, None, generator, encoder, "attention",
                                                              "attention+offsets", 0, "cpu", np.pi, rotations, 0, 0)
    np.savez(out, x=drawn["x"].numpy(), **{key: value.numpy() for key, value in reading.items()})


def encode(kind: str, model_file: str, images: str, out: str, batch: int = 100) -> None:
    encoder = torch.load(model_file, weights_only=False).eval()
    images = torch.from_numpy(np.load(images))
    box = images.shape[-1]
    if kind == "target":
        from clustering_particles import get_latent  # TARGET-VAE's, from the clone on sys.path
        grid = their_grid(box)
    parts = []
    with torch.no_grad():
        for chunk in images.split(batch):
            if kind == "spatial":
                mu, logstd = encoder(chunk.reshape(len(chunk), -1))
                parts.append({"mu": mu, "logstd": logstd})
            else:
                z_content, theta, dx = get_latent(grid, chunk[:, None], encoder, "attention", "attention+offsets",
                                                  "cpu")
                parts.append({"z_content": z_content, "theta": theta, "dx": dx})
    np.savez(out, **{key: torch.cat([part[key] for part in parts]).numpy() for key in parts[0]})


# ---- command line -------------------------------------------------------------------------------------------------

def commit(directory: Path) -> str:
    return subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


@click.command()
@click.option("--spatial-vae-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Clone of github.com/tbepler/spatial-VAE (for the spatial rows).")
@click.option("--target-vae-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Clone of github.com/SMLC-NYSBC/TARGET-VAE (for the target-P8 rows).")
@click.option("--sets", default=",".join(SETS), show_default=True, help=f"Comma-separated among {', '.join(SETS)}.")
@click.option("--models", default=",".join(ROWS), show_default=True,
              help=f"Comma-separated among {', '.join(ROWS)}.")
@click.option("--ours", is_flag=True, help="Also train and score our rows of the same settings (`emgroup train`).")
@click.option("-n", "--n-particles", default=5000, show_default=True, help="Particles of the mix-snr0.3 set.")
@click.option("--n-train", default=mnist.QUICK["n_train"], show_default=True, help="MNIST training digits.")
@click.option("--n-test", default=mnist.QUICK["n_test"], show_default=True, help="MNIST test digits.")
@click.option("--epochs", type=click.IntRange(1), help="Override every row's number of epochs (both codes).")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True, help="CPU threads per run.")
@click.option("--seed", default=0, show_default=True, help="Seed of the data, training and analysis.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), show_default=True,
              default=REPO / "runs" / "benchmarks" / "reference", help="Folder for data, runs and analyses.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=RESULTS / "reference.json",
              show_default=True, help="JSON of the figures.")
def main(spatial_vae_dir, target_vae_dir, sets, models, ours, n_particles, n_train, n_test, epochs, threads, seed,
         workdir, output):
    sets, rows = choose(sets, SETS, "set"), choose(models, ROWS, "model")
    given = {"spatial_vae_dir": spatial_vae_dir, "target_vae_dir": target_vae_dir}
    repos = {row: given[ROWS[row][0]] for row in rows}
    if missing := [f"--{ROWS[row][0].replace('_', '-')}" for row in rows if repos[row] is None]:
        raise click.UsageError(f"{', '.join(missing)} needed for --models {','.join(rows)}")
    repos = {row: path.resolve() for row, path in repos.items()}
    workdir = workdir.resolve()
    results = []
    if "mnist-U" in sets:
        results += mnist_rows(rows, repos, ours, workdir / "mnist", n_train, n_test, epochs, seed, threads)
    if "mix-snr0.3" in sets:
        results += cryoem_rows(rows, repos, ours, workdir, n_particles, epochs, seed, threads)
    for data, columns in (("mnist-U", MNIST_COLUMNS), ("mix-snr0.3", CRYOEM_COLUMNS)):
        if data in sets:
            print_table([row for row in results if row["data"] == data], columns)
    write_results(output, {
        "threads": threads, "seed": seed,
        "n_particles": n_particles, "n_train": n_train, "n_test": n_test, "epochs": epochs,
        "repositories": {name: {"dir": str(path), "commit": commit(path)} for name, path in given.items() if path},
        "rows": results})
    print(f"wrote {output}")


if __name__ == "__main__":
    if sys.argv[1:2] == [CHILD]:
        child(*sys.argv[2:])
    else:
        main()
