"""Particle preprocessing: Fourier cropping, contrast inversion, background normalization, and the streamed
`emgroup preprocess` pipeline that writes one MRCS stack + RELION 3.1 STAR.

Images are float32 ``(N, D, D)`` with the centre at pixel ``D // 2``.
"""

from pathlib import Path

import numpy as np
import scipy.fft as sfft
from tqdm import tqdm

from emgroup.data.stack import Stack, require_finite, write_particles
from emgroup.errors import InputError
from emgroup.geometry import squared_distances

#: STAR column holding the seeded train/validation split (values ``train`` and ``val``)
SPLIT_COLUMN = "rlnEmgroupSplit"
#: the image each particle was made from (RELION's label, as its extraction and subtraction write it) and the
#: images before it: ``rlnEmgroupImageOriginalName2`` (the original's original), ``...3``, ...
ORIGIN_LABEL, EARLIER_ORIGIN_LABEL = "rlnImageOriginalName", "rlnEmgroupImageOriginalName"


def fourier_crop(images: np.ndarray, new_box: int) -> np.ndarray:
    """Downsample ``(N, D, D)`` images to ``(N, d, d)`` by keeping the ``d x d`` lowest spatial frequencies.

    Frequencies are taken about the centre pixel ``D // 2``, which maps onto ``d // 2``; values are scaled by
    ``(d / D)**2`` so pixel values (and the mean) keep their scale. The pixel size grows by ``D / d``.
    """
    images = np.asarray(images, dtype=np.float32)
    box, new_box = images.shape[-1], int(new_box)
    if not 1 <= new_box <= box:
        raise ValueError(f"cannot Fourier-crop {box} px images to {new_box} px")
    spectrum = sfft.fftshift(sfft.rfft2(sfft.ifftshift(images, axes=(-2, -1))), axes=-2)
    low = box // 2 - new_box // 2
    kept = sfft.ifftshift(spectrum[..., low:low + new_box, :new_box // 2 + 1], axes=-2)
    cropped = sfft.fftshift(sfft.irfft2(kept, s=(new_box, new_box)), axes=(-2, -1))
    return (cropped * (new_box / box) ** 2).astype(np.float32)


def fourier_pad(images: np.ndarray, new_box: int) -> np.ndarray:
    """Upsample ``(N, D, D)`` images to ``(N, d, d)``, ``d >= D``, by zero-padding their spatial frequencies (the
    band-limited interpolation; :func:`fourier_crop` undoes it). The centre pixel ``D // 2`` maps onto ``d // 2``;
    values keep their scale. The pixel size shrinks by ``D / d``."""
    images = np.asarray(images, dtype=np.float32)
    box, new_box = images.shape[-1], int(new_box)
    if new_box < box:
        raise ValueError(f"cannot Fourier-pad {box} px images to {new_box} px")
    axes = (-2, -1)
    spectrum = sfft.fftshift(sfft.fft2(sfft.ifftshift(images, axes=axes)), axes=axes)
    low = new_box // 2 - box // 2
    padded = np.zeros((*images.shape[:-2], new_box, new_box), dtype=spectrum.dtype)
    padded[..., low:low + box, low:low + box] = spectrum
    upsampled = sfft.fftshift(sfft.ifft2(sfft.ifftshift(padded, axes=axes)), axes=axes).real
    return (upsampled * (new_box / box) ** 2).astype(np.float32)


def invert(images: np.ndarray) -> np.ndarray:
    """Contrast inversion (dark particles become bright)."""
    return -np.asarray(images, dtype=np.float32)


def normalize(images: np.ndarray, radius: float | None = None) -> np.ndarray:
    """Per image, subtract the background mean and divide by the background standard deviation, the background
    being the pixels outside a circle of ``radius`` px (default ``D / 2``) about the centre (RELION's --norm with
    --no_ramp). A constant background gives non-finite values (the caller checks)."""
    images = np.asarray(images, dtype=np.float32)
    box = images.shape[-1]
    outside = squared_distances(box).numpy() > (box / 2 if radius is None else radius) ** 2
    background = images[:, outside].astype(np.float64)
    mean, std = background.mean(axis=1), background.std(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((images - mean[:, None, None]) / std[:, None, None]).astype(np.float32)


def split_labels(n: int, val_fraction: float, seed: int) -> np.ndarray:
    """``n`` labels, ``round(n * val_fraction)`` of them ``"val"`` chosen at random (seeded), the rest ``"train"``."""
    labels = np.full(n, "train", dtype=object)
    labels[np.random.default_rng(seed).choice(n, size=round(n * val_fraction), replace=False)] = "val"
    return labels


def record_origin(meta):
    """``meta`` with ``rlnImageName`` as ``rlnImageOriginalName`` (the image each particle is made from) and the
    origins it had one step further back (``rlnImageOriginalName`` to ``rlnEmgroupImageOriginalName2``, that to
    ``...3``, ...): the whole provenance chain, every label once."""
    chain = [ORIGIN_LABEL]
    while chain[-1] in meta:
        chain.append(f"{EARLIER_ORIGIN_LABEL}{len(chain) + 1}")
    return meta.rename(columns={"rlnImageName": ORIGIN_LABEL, **dict(zip(chain[:-1], chain[1:]))})


def preprocess_stack(stack: Stack, out_star, *, downsample: int | None = None, invert_contrast=False,
                     normalize_background=True, max_particles: int | None = None, val_fraction: float = 0.0,
                     seed: int = 0, chunk_size: int = 256, progress: bool = True) -> Path:
    """Stream ``stack`` through crop -> invert -> normalize into ``out_star`` (+ the ``.mrcs`` beside it).

    Keeps the first ``max_particles``; writes every input column (the input ``rlnImageName`` becomes
    ``rlnImageOriginalName``, earlier origins move back: :func:`record_origin`) plus :data:`SPLIT_COLUMN`; the
    pixel size is scaled by ``box / downsample`` and CTF columns are kept. Memory holds one chunk of ``chunk_size`` images. Raises :class:`InputError` for
    non-finite pixels or a constant background (naming the particle) and for an impossible option.
    """
    out_star = Path(out_star)
    out_mrcs = out_star.with_suffix(".mrcs")
    if max_particles is not None:
        stack = stack.subset(slice(0, max_particles))
    new_box = stack.box if downsample is None else int(downsample)
    if not 2 <= new_box <= stack.box:
        raise InputError(f"cannot downsample {stack.box} px particles to {new_box} px")
    if out_mrcs.resolve() in {source.resolve() for source in stack.sources}:
        raise InputError("output would overwrite an input stack", out_mrcs)
    labels = split_labels(len(stack), val_fraction, seed)
    if (labels == "val").all():
        raise InputError(f"validation fraction {val_fraction} leaves no particle of {len(stack)} for training")
    meta = record_origin(stack.meta).assign(**{SPLIT_COLUMN: labels})

    def processed():
        with tqdm(total=len(stack), unit="particle", desc="preprocess", disable=not progress) as bar:
            for indices, images in stack.iter_chunks(chunk_size):
                require_finite(stack, indices, images)
                images = fourier_crop(images, new_box) if new_box != stack.box else images
                images = invert(images) if invert_contrast else images
                if normalize_background:
                    images = normalize(images)
                    require_finite(stack, indices, images, "has a constant background (use --no-normalize)")
                bar.update(len(indices))
                yield images

    return write_particles(out_star, processed(), meta, stack.optics, stack.apix * stack.box / new_box, out_mrcs)

