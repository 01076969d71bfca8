"""The exhaustive in-plane pose search: it finds the pose that made an image, through a CTF, with either
likelihood, within the shift limit, and its priors break ties."""

import math

import pytest
import torch

from emgroup.ctf import apply_ctf, ctf_parameters, ctf_rfft
from emgroup.models.grids import coordinate_grid, resample_images, rotation_matrix
from emgroup.models.pose_search import search_inplane_pose


def canonical(box: int, n: int, symmetric: bool = False) -> torch.Tensor:
    """(n, box, box) one object: three blobs (or, ``symmetric``, two equal ones about the centre)."""
    xy = coordinate_grid(box).view(box, box, 2)
    spots = ([((0.35, 0.0), 1.0, 0.12), ((-0.35, 0.0), 1.0, 0.12)] if symmetric else
             [((0.0, 0.0), 1.0, 0.2), ((0.45, 0.0), 0.8, 0.12), ((0.0, 0.3), 0.6, 0.1)])
    image = sum(h * torch.exp(-((xy - torch.tensor(c)) ** 2).sum(-1) / (2 * w * w)) for c, h, w in spots)
    return image.expand(n, box, box).contiguous()


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_finds_the_pose_that_made_the_image_between_the_grid_points(likelihood):
    box, angles = 32, 36
    theta = torch.tensor([0.0, 10.3, 19.45, 25.2, -8.4]) * (2 * math.pi / angles)  # off the 10-degree grid
    moved = torch.tensor([[0.0, 0.0], [2.3, -1.0], [-2.6, 1.8], [1.0, 3.4], [0.2, -2.0]])  # px, off whole pixels
    shift = -(rotation_matrix(theta) @ moved[..., None])[..., 0]  # the object moved by d: t = -R(theta) d
    object_ = canonical(box, 5)
    ctf = None
    if likelihood == "gaussian":
        ctf = torch.as_tensor(ctf_parameters(3.0, [9000.0, 12000, 15000, 18000, 21000], 9000.0, 30.0, 300.0, 2.7,
                                             0.1))
        images = apply_ctf(resample_images(object_, theta, shift), ctf_rfft(box, ctf))
        output, log_sigma = object_, torch.tensor(-1.0)
    else:
        images = torch.sigmoid(8 * (resample_images(object_, theta, shift) - 0.3))  # probabilities as pixels
        output, log_sigma = 8 * (object_ - 0.3), None
    found, found_shift = search_inplane_pose(output, images, likelihood, log_sigma, ctf, angles, shift_sigma=2.0,
                                             max_shift=5.0)
    error = torch.remainder(found - theta + math.pi, 2 * math.pi) - math.pi
    assert error.abs().max() < 0.3 * (2 * math.pi / angles)  # under a third of the angular step
    found_moved = -(rotation_matrix(-found) @ found_shift[..., None])[..., 0]
    error = (found_moved - moved).abs()
    assert error.max() < 0.35 and error.mean() < 0.12  # px; rounding to whole pixels: 0.4 and 0.15 here


def test_shifts_are_limited_and_priors_break_ties():
    box = 32
    symmetric = canonical(box, 2, symmetric=True)  # the same at theta and theta + pi
    images = resample_images(symmetric, torch.tensor([math.pi - 0.3, 0.3]))
    prior = lambda t: -0.5 * (torch.remainder(t + math.pi, 2 * math.pi) - math.pi) ** 2  # noqa: E731
    found, _ = search_inplane_pose(symmetric, images, "gaussian", torch.tensor(0.0), None, 64, prior)
    assert torch.allclose(found, torch.tensor([2 * math.pi - 0.3, 0.3]), atol=0.05)  # both near 0, not pi away
    far = resample_images(symmetric, None, torch.tensor([[5.0, 0.0], [0.0, 0.0]]))
    _, moved = search_inplane_pose(symmetric, far, "gaussian", torch.tensor(0.0), None, 1, max_shift=3.0)
    assert moved.norm(dim=1).max() <= 3.0 and moved[1].abs().max() == 0
    _, moved = search_inplane_pose(symmetric, far, "gaussian", torch.tensor(0.0), None, 1, shift_sigma=None)
    assert torch.all(moved == 0)
