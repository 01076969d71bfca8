"""Batched in-plane image transforms (numpy/scipy) in the model convention of :mod:`emgroup.models.grids`.

A pose ``(theta, shift)`` (radians; pixels ordered x, y) means ``image(x) = canonical(R(theta) @ x + shift)`` on the
pixel grid centred at ``D // 2``; these functions agree with ``emgroup.models.grids.resample_images`` (bilinear,
zeros outside the box).
"""

import numpy as np
from scipy import ndimage

from emgroup.data.poses import rotate_2d


def transform_images(canonical, theta, shift_px=None) -> np.ndarray:
    """``out[i](x) = canonical[i](R(theta[i]) @ x + shift[i])``: (N, D, D) -> float32 (N, D, D).

    theta (N,) radians; shift_px (N, 2) pixels (x, y) or None. Bilinear interpolation, zeros outside the box.
    """
    images = np.asarray(canonical, dtype=np.float32)
    n, box = images.shape[0], images.shape[-1]
    theta = np.broadcast_to(np.asarray(theta, dtype=float), (n,))
    shift = np.zeros((n, 2)) if shift_px is None else np.asarray(shift_px, dtype=float).reshape(n, 2)
    axis = np.arange(box) - box // 2
    y, x = np.meshgrid(axis, axis, indexing="ij")
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    source_x = c * x - s * y + shift[:, 0, None, None] + box // 2
    source_y = s * x + c * y + shift[:, 1, None, None] + box // 2
    index = np.broadcast_to(np.arange(n, dtype=float)[:, None, None], source_x.shape)
    return ndimage.map_coordinates(images, [index, source_y, source_x], order=1, mode="grid-constant", cval=0.0)


def align_images(images, theta, shift_px=None) -> np.ndarray:
    """Undo :func:`transform_images`: the canonical frame of (N, D, D) images with pose (theta (N,), shift (N, 2))."""
    theta = np.asarray(theta, dtype=float).reshape(-1)
    if shift_px is None:
        return transform_images(images, -theta)
    # canonical(u) = image(R(-theta) u - R(-theta) shift)
    return transform_images(images, -theta, -rotate_2d(-theta, np.asarray(shift_px, dtype=float).reshape(-1, 2)))
