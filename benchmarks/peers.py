"""Peers on the same stack (issue 20): emgroup's denoised particles against Topaz-Denoise and a low-pass filter,
and its clusters and class averages against RELION 2D classification.

Data: the yardstick's closed/open adenylate-kinase mixture (:func:`cryoem.simulate`: `emgroup simulate` with a CTF,
40 px at 2.5 Å/px, uniform in-plane rotation, 1.5 px shifts, then `emgroup preprocess`) at SNR 0.3 and 0.1,
5,000 particles each (the yardstick's), seed 0; `simulate`'s clean.mrcs (the particles without CTF and noise) is
the truth.

* emgroup: spatial-VAE with the yardstick's settings (z 1, 12 epochs; :data:`cryoem.MODELS`) and any
  ``--option``, then `emgroup analyze --clusters 2`, which writes the denoised particles (each particle's
  reconstruction, without the CTF), the clusters and the CTF-corrected class averages (:func:`cryoem.run_model`);
  its wall time is training plus analysis, the same for both tables; its pose figures are the yardstick's, beside
  RELION's.
* Topaz-Denoise: the pretrained model `topaz denoise` uses by default (``unet``, U-net trained with an L2 loss on
  micrographs; ``pip install 'emgroup[peers]'``) on the preprocessed particles, 256 at a time.
* low-pass: a Gaussian filter (amplitude 1/2 at the cutoff), the cutoff in :data:`CUTOFFS_A` that gives the best
  correlation with the clean particles on the first :data:`TUNE_FRACTION` of the stack (an oracle choice, with
  the truth); every denoiser is scored on the rest.
* RELION 2D: `relion_refine --K 2` with the yardstick's settings (:func:`cryoem.run_relion`, one thread, no MPI).

Denoising figures, on the scored particles: mean Pearson correlation with the clean particles (``r_clean``) and
with the clean particles with their CTF (``r_clean_ctf``: what a denoiser that keeps the CTF, as Topaz and the
filter do, can reach at best), and the resolution (Å) where the mean FRC over particles falls below 0.5, against
each. Class figures: clustering accuracy against the state (Hungarian), and each class average's resolution at
FRC 0.5 against the clean mean of the state it is matched to (the clean particles aligned by their true poses and
averaged; the average first aligned to it in rotation (1°) and shift; classes matched to states by the best total
correlation). 0.5, not 0.143: the reference is the noise-free truth, not an independent half (0.143 between half
maps corresponds to 0.5 against the truth).

    python benchmarks/peers.py                 # both SNRs, 5,000 particles each (hours on one core)
    python benchmarks/peers.py --sets mix-snr0.3      # one set now, ...
    python benchmarks/peers.py --resume               # ... the other later, one table
    python benchmarks/peers.py --option hidden=500    # spatial-VAE at the paper's width
    python benchmarks/peers.py --quick         # 300 particles, 2 epochs (a check of the pipeline, minutes)
"""

import json
import time
from pathlib import Path

import click
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from common import REPO, RESULTS, choose, parse_options, print_table, write_results
from cryoem import APIX, MODELS, RELION_2D, SETS, TRUTH, run_model, run_relion, simulate
from emgroup.analysis.frames import class_frames
from emgroup.analysis.metrics import fourier_ring_correlation, frc_resolution, image_correlation
from emgroup.data.ctf import stack_ctf
from emgroup.data.poses import model_from_relion
from emgroup.data.stack import Stack
from emgroup.data.transforms import align_images, transform_images
from emgroup.io.mrc import open_stack

DEFAULT_SETS = ("mix-snr0.3", "mix-snr0.1")
#: low-pass cutoffs tried (Å; Nyquist is 5 Å)
CUTOFFS_A = (50.0, 40.0, 30.0, 25.0, 20.0, 16.0, 13.0, 10.0, 8.0, 6.0)
#: the first particles of the stack, on which the low-pass cutoff is chosen (not scored)
TUNE_FRACTION = 0.1
#: FRC threshold against the noise-free truth
FRC_THRESHOLD = 0.5
#: the yardstick's budget (5,000 particles, 12 epochs: :data:`cryoem.MODELS`)
FULL = {"n_particles": 5000, "epochs": 12}
QUICK = {"n_particles": 300, "epochs": 2}
DENOISING_COLUMNS = ["data", "method", "cutoff_A", "r_clean", "r_clean_ctf", "frc_clean_A", "frc_clean_ctf_A",
                     "seconds"]
CLASS_COLUMNS = ["data", "method", "state_accuracy", "class_resolution_A", "class_r", "seconds"]


def lowpass(images: np.ndarray, cutoff_A: float, apix: float) -> np.ndarray:
    """Gaussian low-pass of (N, D, D) images: amplitude exp(-ln 2 (k / k_c)^2), 1/2 at k_c = 1 / cutoff_A Å⁻¹."""
    box = images.shape[-1]
    ky, kx = np.meshgrid(np.fft.fftfreq(box, apix), np.fft.rfftfreq(box, apix), indexing="ij")
    gain = np.exp(-np.log(2) * (np.hypot(ky, kx) * cutoff_A) ** 2)
    return np.fft.irfft2(np.fft.rfft2(images) * gain, s=(box, box)).astype(np.float32)


def topaz_denoise(images: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, D, D) images through Topaz-Denoise's default pretrained model (``unet``), ``batch`` at a time."""
    try:
        import topaz.denoising.models as topaz_models
        from topaz.denoise import Denoise
        from topaz.model.utils import load_state_dict_from_pkg
    except ImportError as error:
        raise SystemExit(f"Topaz-Denoise is not installed ({error}): pip install 'emgroup[peers]'") from error
    # topaz-em 0.3.20 resolves its weights as '../pretrained/...' of a module, which importlib refuses and only
    # pkg_resources (gone from setuptools >= 81) accepted: the same path, from its package
    topaz_models.load_state_dict_from_pkg = lambda _module, path: load_state_dict_from_pkg("topaz.denoising", path)
    model = Denoise("unet")
    return np.concatenate([model.denoise(images[i:i + batch]).reshape(-1, *images.shape[1:])
                           for i in range(0, len(images), batch)])


def denoising_scores(denoised: np.ndarray, clean: np.ndarray, clean_ctf: np.ndarray, box: int) -> dict:
    """Correlations and FRC-0.5 resolutions (Å) of denoised particles (N, D, D) against the clean ones without and
    with the CTF; the mean FRC curves too."""
    row = {}
    for name, truth in (("clean", clean), ("clean_ctf", clean_ctf)):
        curve = fourier_ring_correlation(denoised, truth).mean(0)
        row |= {f"r_{name}": float(image_correlation(denoised, truth).mean()),
                f"frc_{name}_A": frc_resolution(curve, box, APIX, FRC_THRESHOLD), f"frc_{name}": curve.tolist()}
    return row


def clean_means(clean: np.ndarray, star: Stack) -> np.ndarray:
    """(S, D, D): the clean particles of each true state brought to pose 0 by their true poses and averaged."""
    meta = star.meta
    theta, shift = model_from_relion(meta["rlnAnglePsi"], meta["rlnOriginXAngst"], meta["rlnOriginYAngst"], APIX)
    aligned = align_images(clean, theta, shift)
    states = meta[TRUTH].to_numpy()
    return np.stack([aligned[states == state].mean(0) for state in np.unique(states)])


def class_scores(averages: np.ndarray, means: np.ndarray, box: int) -> dict:
    """Class averages (K, D, D) against the clean state means (S, D, D): each average aligned to each mean, classes
    matched to states by the largest total correlation; per matched class its correlation and FRC-0.5 resolution."""
    def standard(image):
        return (image - image.mean()) / image.std()

    aligned = np.empty((len(averages), len(means), box, box), np.float32)
    for k, average in enumerate(averages):
        for s, mean in enumerate(means):
            angle, shift = class_frames(np.stack([standard(mean), standard(average)]), np.array([1, 0]))
            aligned[k, s] = transform_images(average[None], angle[1:], shift[1:])[0]
    r = image_correlation(aligned.reshape(-1, box, box), np.repeat(means[None], len(averages), 0)
                          .reshape(-1, box, box)).reshape(len(averages), len(means))
    classes, states = linear_sum_assignment(-r)
    resolution = [frc_resolution(fourier_ring_correlation(aligned[k, s], means[s]), box, APIX, FRC_THRESHOLD)
                  for k, s in zip(classes, states)]
    return {"class_resolution_A": float(np.mean(resolution)), "class_resolutions_A": resolution,
            "class_r": float(r[classes, states].mean()), "class_state": states.tolist()}


def run_set(data: str, folder: Path, n: int, epochs: int, precision: str, model_options: dict, seed: int,
            threads: int) -> tuple[list, list]:
    """The denoising rows and the class rows of one set."""
    kind, snr = SETS[data]
    particles = simulate(folder, kind, snr, n, seed, threads)
    stack = Stack.open(particles)
    images, clean = stack.images(), np.asarray(open_stack(folder / "prep" / "clean.mrcs"), dtype=np.float32)
    box = stack.box
    clean_ctf = np.fft.irfft2(np.fft.rfft2(clean) * stack_ctf(stack), s=(box, box)).astype(np.float32)
    tune, scored = np.arange(n) < int(TUNE_FRACTION * n), np.arange(n) >= int(TUNE_FRACTION * n)

    name, (model, options, train) = "spatial", MODELS["spatial"]
    start = time.perf_counter()
    train = {**train, "epochs": epochs, "precision": precision}
    ours = run_model(name, model, {**options, **model_options}, train, particles, folder, "mix", seed, threads)
    ours_seconds = time.perf_counter() - start
    analysis = folder / "analysis" / name

    torch.set_num_threads(threads)
    start = time.perf_counter()
    topaz = topaz_denoise(images)
    topaz_seconds = time.perf_counter() - start

    tuning = {cutoff: image_correlation(lowpass(images[tune], cutoff, APIX), clean[tune]).mean()
              for cutoff in CUTOFFS_A}
    cutoff = max(tuning, key=tuning.get)
    start = time.perf_counter()
    filtered = lowpass(images, cutoff, APIX)
    filter_seconds = time.perf_counter() - start

    denoised = {"emgroup spatial-VAE": (open_stack(analysis / "denoised.mrcs"), ours_seconds, {}),
                "Topaz-Denoise (unet)": (topaz, topaz_seconds, {}),
                "low-pass": (filtered, filter_seconds, {"cutoff_A": cutoff, "tuning_r_clean": {
                    f"{c:g}": float(r) for c, r in tuning.items()}}),
                "none (noisy input)": (images, 0.0, {})}
    denoising = [{"data": data, "method": method, **denoising_scores(np.asarray(out)[scored], clean[scored],
                                                                    clean_ctf[scored], box), "seconds": seconds,
                  **extra} for method, (out, seconds, extra) in denoised.items()]

    relion = run_relion(particles, folder, "mix", seed, threads)
    means = clean_means(clean, stack)
    pose = ("rotation_uniform", "rotation_published", "shift_x", "shift_y")
    classes = [{"data": data, "method": "emgroup spatial-VAE", "state_accuracy": ours["state_accuracy"],
                **{key: ours[key] for key in pose},
                **class_scores(open_stack(analysis / "class_averages.mrcs"), means, box), "seconds": ours_seconds,
                "train_seconds": ours["train_seconds"], "budget": ours["budget"]},
               {"data": data, "method": "RELION 2D", "state_accuracy": relion["state_accuracy"],
                **{key: relion[key] for key in pose},
                **class_scores(open_stack(folder / "relion2d" / "run_it025_classes.mrcs"), means, box),
                "seconds": relion["train_seconds"], "budget": relion["budget"], "command": relion["command"]}]
    return denoising, classes


@click.command()
@click.option("--sets", default=",".join(DEFAULT_SETS), show_default=True,
              help=f"Comma-separated among {', '.join(s for s in SETS if s.startswith('mix'))}.")
@click.option("--quick", is_flag=True, help=f"{QUICK['n_particles']} particles, {QUICK['epochs']} epochs (a check of "
              "the pipeline, minutes).")
@click.option("-n", "--n-particles", type=click.IntRange(20), help=f"Particles per set [default: "
              f"{FULL['n_particles']}].")
@click.option("--epochs", type=click.IntRange(1), help=f"spatial-VAE's epochs [default: {FULL['epochs']}].")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="auto", show_default=True,
              help="spatial-VAE's `emgroup train --precision` (auto: bf16 on CPUs with AMX or AVX512-BF16, else "
              "fp32).")
@click.option("--option", "model_options", multiple=True, metavar="KEY=VALUE",
              help="A spatial-VAE option beside the yardstick's (`emgroup train --KEY VALUE`, e.g. hidden=500); "
              "repeatable.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="CPU threads of every step (emgroup, Topaz, relion_refine --j).")
@click.option("--seed", default=0, show_default=True, help="Seed of the data, training, analysis and RELION.")
@click.option("--resume", is_flag=True, help="Keep the sets already done in --workdir (SET/rows.json) instead of "
              "redoing them (after runs split over several invocations).")
@click.option("--workdir", type=click.Path(file_okay=False), default=str(REPO / "runs" / "benchmarks" / "peers"),
              show_default=True, help="Folder for data, runs and analyses.")
@click.option("--output", type=click.Path(dir_okay=False),
              help="JSON of the figures [default: benchmarks/results/peers.json, or peers_quick.json].")
def main(sets, quick, n_particles, epochs, precision, model_options, threads, seed, resume, workdir, output):
    settings = QUICK if quick else FULL
    try:
        model_options = parse_options(model_options)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    n, epochs = n_particles or settings["n_particles"], epochs or settings["epochs"]
    denoising, classes = [], []
    for data in choose(sets, [s for s in SETS if s.startswith("mix")], "set"):
        cached = Path(workdir) / data / "rows.json"
        if resume and cached.is_file():
            done = json.loads(cached.read_text())
        else:
            done = dict(zip(("denoising", "classes"), run_set(data, Path(workdir) / data, n, epochs, precision,
                                                              model_options, seed, threads)))
            write_results(cached, done)
        denoising += done["denoising"]
        classes += done["classes"]
        print(f"done: {data}", flush=True)
    print_table(denoising, DENOISING_COLUMNS)
    print()
    print_table(classes, CLASS_COLUMNS)
    output = output or RESULTS / ("peers_quick.json" if quick else "peers.json")
    write_results(output, {"mode": "quick" if quick else "full", "n_particles": n, "epochs": epochs,
                           "precision": precision, "model_options": model_options,
                           "threads": threads, "seed": seed, "cutoffs_A": CUTOFFS_A, "tune_fraction": TUNE_FRACTION,
                           "frc_threshold": FRC_THRESHOLD, "relion_2d": RELION_2D, "denoising": denoising,
                           "classes": classes})
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
