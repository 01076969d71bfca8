"""Class averages: the mean of each cluster's particles after undoing their inferred in-plane pose."""

import numpy as np
from tqdm import tqdm

from emgroup.data.transforms import align_images


def class_averages(stack, labels, theta, shift_px, n_classes: int, batch_size: int = 256,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(averages (K, D, D) float32, counts (K,))`` of the particles of ``stack`` (a ParticleStack) in classes
    ``labels`` (N,) 0..K-1, each brought to the canonical frame with :func:`emgroup.data.transforms.align_images`
    and its pose ``theta`` (N,) radians and ``shift_px`` (N, 2) pixels (x, y). Streams ``batch_size`` particles at
    a time; an empty class averages to zeros."""
    labels = np.asarray(labels)
    sums = np.zeros((n_classes, stack.box * stack.box))
    with tqdm(total=len(stack), desc="class averages", unit="particle", disable=not progress) as bar:
        for indices, images in stack.iter_chunks(batch_size):
            aligned = align_images(images, theta[indices], shift_px[indices]).reshape(len(indices), -1)
            members = labels[indices][None, :] == np.arange(n_classes)[:, None]  # (K, m) one-hot
            sums += members @ aligned
            bar.update(len(indices))
    counts = np.bincount(labels, minlength=n_classes)
    averages = sums / np.maximum(counts, 1)[:, None]
    return averages.reshape(n_classes, stack.box, stack.box).astype(np.float32), counts
