"""SO(3) in torch: quaternions <-> matrices, uniform random rotations, batched on-device volume rotation.

The voxel grid follows :mod:`emgroup.models.grids` one dimension up: voxel (z, y, x) = (k, i, j) has normalized
coordinates ``((j, i, k) - D // 2) / (D / 2)`` ordered (x, y, z). :func:`rotate_volumes` computes
``out(x) = vol(R @ x)``, like ``resample_images``; so a volume turned by RELION's matrix ``A`` (a point ``p`` of the
object moves to ``A p``, as `emgroup simulate --volumes` writes them) is ``rotate_volumes(vol, A^T)``.
"""

import math

import torch


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotation matrices from (N, 4) quaternions (w, x, y, z), normalised first."""
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(m: torch.Tensor) -> torch.Tensor:
    """(N, 4) unit quaternions (w, x, y, z), w >= 0, of (N, 3, 3) rotation matrices.

    Each row is read off the matrix divided by its largest component (4 q_k^2 = 1 +/- the diagonal terms), the
    numerically stable choice also at 180 degrees.
    """
    d = torch.diagonal(m, dim1=-2, dim2=-1)
    signs = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=m.dtype, device=m.device)
    t = 1 + d @ signs.T  # 4 w^2, 4 x^2, 4 y^2, 4 z^2
    o = torch.stack([m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1)
    e = torch.stack([m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]], -1)
    candidates = torch.stack([  # row k: 4 q_k * (w, x, y, z)
        torch.stack([t[..., 0], o[..., 0], o[..., 1], o[..., 2]], -1),
        torch.stack([o[..., 0], t[..., 1], e[..., 0], e[..., 1]], -1),
        torch.stack([o[..., 1], e[..., 0], t[..., 2], e[..., 2]], -1),
        torch.stack([o[..., 2], e[..., 1], e[..., 2], t[..., 3]], -1)], -2)
    best = t.argmax(-1)[..., None, None].expand(*t.shape[:-1], 1, 4)
    q = torch.nn.functional.normalize(torch.gather(candidates, -2, best)[..., 0, :], dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def rotation_angle(m: torch.Tensor) -> torch.Tensor:
    """(N,) rotation angles in radians, in [0, pi], of (N, 3, 3) rotation matrices."""
    trace = torch.diagonal(m, dim1=-2, dim2=-1).sum(-1)
    return torch.arccos(torch.clamp((trace - 1) / 2, -1.0, 1.0))


def random_rotations(n: int, max_angle: float = math.pi, generator=None, device=None,
                     dtype=torch.float32) -> torch.Tensor:
    """(n, 3, 3) rotations drawn uniformly (Haar measure) from SO(3), restricted to angles <= ``max_angle`` (rad).

    A uniform axis and an angle from the Haar marginal ``p(w) = (1 - cos w) / pi``, whose CDF
    ``(w - sin w) / pi`` is inverted by bisection, truncated at ``max_angle``.
    """
    kw = dict(generator=generator, device=device, dtype=dtype)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, **kw), dim=-1)
    limit = min(max_angle, math.pi)
    target = torch.rand(n, **kw) * (limit - math.sin(limit))
    low, high = torch.zeros_like(target), torch.full_like(target, limit)
    for _ in range(40):  # w - sin w increases on [0, pi]; 40 halvings reach float precision
        mid = (low + high) / 2
        above = mid - torch.sin(mid) > target
        low, high = torch.where(above, low, mid), torch.where(above, mid, high)
    angle = (low + high) / 2
    return quaternion_to_matrix(torch.cat([torch.cos(angle / 2)[:, None], torch.sin(angle / 2)[:, None] * axis], -1))


def ball_mask(box: int, ndim: int = 3, device=None, dtype=torch.float32) -> torch.Tensor:
    """(D,) * ndim mask: 1 on pixels/voxels less than D / 2 from the centre D // 2 (the inscribed disc or ball),
    0 in the corners that rotations move in and out of the box."""
    axis = (torch.arange(box, device=device, dtype=dtype) - box // 2) * (2.0 / box)
    squared = sum(a ** 2 for a in torch.meshgrid(*(axis,) * ndim, indexing="ij"))
    return (squared < 1).to(dtype)


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
    return out * ball_mask(box, 3, volumes.device, volumes.dtype) if mask else out
