"""Class averages: each cluster's particles brought into the canonical frame by their inferred in-plane pose and
averaged; with their CTFs, a Wiener-filtered average in Fourier space, so the averages show the particle as it is
before the microscope (as RELION's 2D classes do)."""

import numpy as np
import torch
from tqdm import tqdm

from emgroup.ctf import ctf_rfft, rotate_ctf_parameters
from emgroup.data.ctf import stack_ctf_parameters
from emgroup.data.transforms import align_images

#: Wiener constant per particle: sum CTF F / (sum CTF^2 + WIENER n), bounding the gain where every CTF is near zero
WIENER = 0.1


def class_averages(stack, labels, theta, shift_px, n_classes: int, batch_size: int = 256, progress: bool = True,
                   ctf: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(averages (K, D, D) float32, counts (K,))`` of the particles of ``stack`` (a Stack) in classes
    ``labels`` (N,) 0..K-1, each brought to the canonical frame with :func:`emgroup.data.transforms.align_images`
    and its pose ``theta`` (N,) radians and ``shift_px`` (N, 2) pixels (x, y). With ``ctf``, each aligned image's CTF
    (turned with it) weighs it in Fourier space and the sums are Wiener-divided: ``sum CTF F / (sum CTF^2 + WIENER
    n)``. Streams ``batch_size`` particles at a time; an empty class averages to zeros."""
    labels = np.asarray(labels)
    box = stack.box
    if ctf:  # Fourier sums of CTF F and of CTF^2
        sums, weights = np.zeros((n_classes, box, box // 2 + 1), complex), np.zeros((n_classes, box, box // 2 + 1))
    else:
        sums = np.zeros((n_classes, box * box))
    with tqdm(total=len(stack), desc="class averages", unit="particle", disable=not progress) as bar:
        for indices, images in stack.iter_chunks(batch_size):
            aligned = align_images(images, theta[indices], shift_px[indices])
            members = (labels[indices][None, :] == np.arange(n_classes)[:, None]).astype(float)  # (K, m) one-hot
            if ctf:  # the aligned image is the particle turned by -theta: so is its CTF
                turned = rotate_ctf_parameters(torch.from_numpy(stack_ctf_parameters(stack, indices)),
                                               torch.from_numpy(-theta[indices]))
                filters = ctf_rfft(box, turned).numpy().astype(float)
                sums += np.einsum("km,mij->kij", members, filters * np.fft.rfft2(aligned))
                weights += np.einsum("km,mij->kij", members, filters**2)
            else:
                sums += members @ aligned.reshape(len(indices), -1)
            bar.update(len(indices))
    counts = np.bincount(labels, minlength=n_classes)
    if ctf:
        averages = np.fft.irfft2(sums / (weights + WIENER * np.maximum(counts, 1)[:, None, None]), s=(box, box))
    else:
        averages = sums / np.maximum(counts, 1)[:, None]
    return averages.reshape(n_classes, box, box).astype(np.float32), counts
