"""Rotations, angles (and the option string of an angle distribution) and masks shared by every layer: one
implementation each, in torch; numpy twins (named ``*_numpy``) only where `emgroup simulate` must reproduce the same
data for the same numpy seed.

Pixel/voxel grids are centred on index ``D // 2`` (RELION's centre). Volumes are (D, D, D) z-y-x and rotation
matrices act on (x, y, z): voxel (z, y, x) = (k, i, j) has normalized coordinates ``((j, i, k) - D // 2) / (D / 2)``
(:mod:`emgroup.models.grids` one dimension up). :func:`rotate_volumes` computes ``out(x) = vol(R @ x)``, like
``resample_images``; so a volume turned by RELION's matrix ``A`` (a point ``p`` of the object moves to ``A p``, as
`emgroup simulate --volumes` writes them) is ``rotate_volumes(vol, A^T)``. Quaternions are (w, x, y, z).
"""

import contextlib
import math

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation


def wrap_angle(theta):
    """Angles (radians; numpy array or torch tensor, returned as such) mapped to [-pi, pi)."""
    return (theta + math.pi) % (2 * math.pi) - math.pi


def parse_angle_distribution(spec: str, option: str, plain=("uniform",)) -> tuple[str, float]:
    """``(kind, sigma_deg)`` of an angle distribution option: one of the parameterless ``plain`` kinds (sigma 0) or
    ``normal:SIGMA_DEG`` (mean 0, 0 < SIGMA_DEG < inf). ValueError naming ``option`` and ``spec`` otherwise."""
    kind, _, sigma = spec.partition(":")
    if kind in plain and not sigma:
        return kind, 0.0
    with contextlib.suppress(ValueError):
        if kind == "normal" and 0 < float(sigma) < math.inf:
            return kind, float(sigma)
    raise ValueError(f"{option}: {spec!r} is not {', '.join(plain)} or normal:SIGMA_DEG (degrees, 0 < SIGMA_DEG < inf, "
                     "e.g. normal:30)")


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotation matrices from (N, 4) quaternions (w, x, y, z), normalised first."""
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def rotation_angle(m: torch.Tensor) -> torch.Tensor:
    """(N,) rotation angles in radians, in [0, pi], of (N, 3, 3) rotation matrices."""
    trace = torch.diagonal(m, dim1=-2, dim2=-1).sum(-1)
    return torch.arccos(torch.clamp((trace - 1) / 2, -1.0, 1.0))


def random_rotations(n: int, max_angle: float = math.pi, generator=None, device=None,
                     dtype=torch.float32, min_angle: float = 0.0) -> torch.Tensor:
    """(n, 3, 3) rotations drawn uniformly (Haar measure) from SO(3), restricted to angles in [``min_angle``,
    ``max_angle``] (rad).

    A uniform axis and an angle from the Haar marginal ``p(w) = (1 - cos w) / pi``, whose CDF
    ``(w - sin w) / pi`` is inverted by bisection, truncated to the range.
    """
    kw = dict(generator=generator, device=device, dtype=dtype)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, **kw), dim=-1)
    limit = min(max_angle, math.pi)
    start = min(min_angle, limit)
    floor = start - math.sin(start)
    target = floor + torch.rand(n, **kw) * (limit - math.sin(limit) - floor)
    low, high = torch.full_like(target, start), torch.full_like(target, limit)
    for _ in range(40):  # w - sin w increases on [0, pi]; 40 halvings reach float precision
        mid = (low + high) / 2
        above = mid - torch.sin(mid) > target
        low, high = torch.where(above, low, mid), torch.where(above, mid, high)
    angle = (low + high) / 2
    return quaternion_to_matrix(torch.cat([torch.cos(angle / 2)[:, None], torch.sin(angle / 2)[:, None] * axis], -1))


def random_rotations_numpy(n: int, rng: np.random.Generator) -> np.ndarray:
    """float64 (n, 3, 3) rotation matrices drawn uniformly (Haar measure) from SO(3) with a numpy generator (the
    draws of `emgroup simulate`, which the same seed must reproduce)."""
    return Rotation.random(n, rng=rng).as_matrix().reshape(n, 3, 3)


def squared_distances(box: int, ndim: int = 2, centre: float | None = None) -> torch.Tensor:
    """float64 (D,) * ndim squared distances in px^2 (exact) of the pixels/voxels from ``centre`` on every axis
    (default ``D // 2``, the grid centre; ``(D - 1) / 2`` is the array's geometric centre)."""
    axis = torch.arange(box, dtype=torch.float64) - (box // 2 if centre is None else centre)
    return sum(a ** 2 for a in torch.meshgrid(*(axis,) * ndim, indexing="ij"))


def ball_mask(box: int, ndim: int = 2, centre: float | None = None, device=None,
              dtype=torch.float32) -> torch.Tensor:
    """(D,) * ndim mask: 1 on the pixels/voxels less than D / 2 from ``centre`` (default ``D // 2``; see
    :func:`squared_distances`), the inscribed disc or ball; 0 in the corners that rotations move in and out of."""
    return (squared_distances(box, ndim, centre) < (box / 2) ** 2).to(device=device, dtype=dtype)


def rotate_volumes(volumes: torch.Tensor, matrices: torch.Tensor, mask: bool = True) -> torch.Tensor:
    """Batched ``out(x) = volumes(R @ x)`` (trilinear, zeros outside): (N, D, D, D) z-y-x and (N, 3, 3) matrices
    acting on (x, y, z) -> (N, D, D, D); with ``mask`` the output is zero outside the inscribed ball."""
    n, box = volumes.shape[0], volumes.shape[-1]
    axis = (torch.arange(box, device=volumes.device, dtype=volumes.dtype) - box // 2) * (2.0 / box)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    coords = torch.stack([x, y, z], -1).reshape(-1, 3) @ matrices.transpose(1, 2)  # (N, D^3, 3)
    # grid_sample (align_corners=False) puts voxel i at (2 i + 1) / D - 1; ours is (i - D // 2) * 2 / D
    coords = coords + (2 * (box // 2) + 1 - box) / box
    out = torch.nn.functional.grid_sample(volumes[:, None], coords.reshape(n, box, box, box, 3), mode="bilinear",
                                          padding_mode="zeros", align_corners=False)[:, 0]
    return out * ball_mask(box, 3, device=volumes.device, dtype=volumes.dtype) if mask else out


def rotate_volume_numpy(volume, matrix) -> np.ndarray:
    """float32 (D, D, D) ``out(x) = volume(R @ x)`` about the centre D // 2 by cubic spline (scipy, on the CPU), for
    one volume (D, D, D) z-y-x and one matrix R (3, 3) acting on (x, y, z): how `emgroup simulate` turns volumes."""
    box = np.asarray(volume).shape[-1]
    centre = np.full(3, box // 2)
    zyx = np.asarray(matrix)[::-1, ::-1]  # acts on (z, y, x) indices
    return ndimage.affine_transform(volume, zyx, offset=centre - zyx @ centre, order=3).astype(np.float32)
