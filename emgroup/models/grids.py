"""Coordinate grids and in-plane transforms shared by the coordinate-based generators.

The pixel grid is centred on index ``D // 2`` (RELION's and cryoSPARC's centre) and scaled so that one pixel is
``2 / D`` normalized units: ``x_norm = (column - D // 2) / (D / 2)``, likewise y from the row. A pose
``(theta, shift)`` (radians; pixels, ordered x, y) means ``image(x) = canonical(R(theta) @ x + shift)``.
"""

import math

import torch


def pixel_size(box: int) -> float:
    """One pixel in normalized units."""
    return 2.0 / box


def coordinate_grid(box: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(D*D, 2) normalized (x, y) coordinates of every pixel, row-major (the order of ``image.reshape(-1)``)."""
    axis = (torch.arange(box, device=device, dtype=dtype) - box // 2) * pixel_size(box)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1)


def rotation_matrix(theta: torch.Tensor) -> torch.Tensor:
    """(N, 2, 2) matrices R(theta) = [[cos, -sin], [sin, cos]] for angles (N,) in radians."""
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def transform_grid(grid: torch.Tensor, theta=None, shift_px=None) -> torch.Tensor:
    """(N, P, 2) coordinates ``R(theta) @ x + shift`` for a (P, 2) grid, theta (N,) rad, shift (N, 2) px."""
    n = (theta if theta is not None else shift_px).shape[0]
    box = round(math.sqrt(grid.shape[0]))
    out = grid.expand(n, *grid.shape)
    if theta is not None:
        out = out @ rotation_matrix(theta).transpose(1, 2)
    if shift_px is not None:
        out = out + shift_px[:, None, :] * pixel_size(box)
    return out


def resample_images(images: torch.Tensor, theta=None, shift_px=None, mode: str = "bilinear",
                    padding: str = "zeros") -> torch.Tensor:
    """Batched, on-device ``out(x) = images(R(theta) @ x + shift)``: (N, D, D) -> (N, D, D), zeros outside
    (``padding="border"``: the nearest border pixel's value).

    theta (N,) radians, shift_px (N, 2) pixels (x, y). With the pose of a particle this renders it from its
    canonical image; with (-theta, -R(-theta) @ shift) it undoes the pose.
    """
    n, box = images.shape[0], images.shape[-1]
    coords = transform_grid(coordinate_grid(box, images.device, images.dtype), theta, shift_px)
    # grid_sample (align_corners=False) puts pixel i at (2 i + 1) / D - 1; ours is (i - D // 2) * 2 / D
    coords = coords + (2 * (box // 2) + 1 - box) / box
    out = torch.nn.functional.grid_sample(images[:, None], coords.reshape(n, box, box, 2), mode=mode,
                                          padding_mode=padding, align_corners=False)
    return out[:, 0]



def canonical_centroid(images: torch.Tensor, theta=None, shift_px=None) -> torch.Tensor:
    """(N, 2) px (x, y): the centroid of each image's positive density (N, D, D), drawn in the pose (theta (N,)
    rad, shift (N, 2) px), in the canonical frame: an image point x is the canonical point ``R(theta) x + shift``."""
    box = images.shape[-1]
    weight = images.clamp(min=0).flatten(1)
    centroid = weight @ (coordinate_grid(box, images.device, weight.dtype) / pixel_size(box))
    centroid = centroid / weight.sum(1, keepdim=True).clamp(min=1e-6)
    if theta is not None:
        centroid = (rotation_matrix(theta) @ centroid[..., None])[..., 0]
    return centroid if shift_px is None else centroid + shift_px
