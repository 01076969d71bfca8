"""Batched numpy in-plane transforms: conventions, inverse, and agreement with the torch resampler."""

import numpy as np
import torch
from scipy import ndimage

from emgroup.data.transforms import align_images, transform_images
from emgroup.models.grids import resample_images


def smooth_images(n, box, seed=0):
    noise = np.random.default_rng(seed).normal(size=(n, box, box))
    return ndimage.gaussian_filter(noise, (0, 2, 2)).astype(np.float32)


def test_shift_and_rotation_conventions_on_the_pixel_grid():
    canonical = smooth_images(1, 16)
    # image(x) = canonical(x + shift): shift (2, -1) px reads two columns right, one row up
    shifted = transform_images(canonical, [0.0], [[2.0, -1.0]])
    np.testing.assert_allclose(shifted[0, 1:, :-2], canonical[0, :-1, 2:], atol=1e-6)
    # theta = 90 deg: image(x, y) = canonical(-y, x) about the centre D // 2
    rotated = transform_images(canonical, [np.pi / 2])[0]
    c = 8
    for x, y in [(3, 1), (-2, 5), (0, -4)]:
        assert abs(rotated[y + c, x + c] - canonical[0, x + c, -y + c]) < 1e-5


def test_matches_the_torch_resampler():
    images = smooth_images(6, 24, seed=1)
    rng = np.random.default_rng(2)
    theta, shift = rng.uniform(-np.pi, np.pi, 6), rng.normal(0, 3, (6, 2))
    expected = resample_images(torch.from_numpy(images), torch.from_numpy(theta).float(),
                               torch.from_numpy(shift).float()).numpy()
    np.testing.assert_allclose(transform_images(images, theta, shift), expected, atol=1e-4)


def test_align_undoes_transform():
    images = np.pad(smooth_images(5, 24, seed=3), ((0, 0), (8, 8), (8, 8)))  # content away from the edges
    rng = np.random.default_rng(4)
    theta, shift = rng.uniform(-np.pi, np.pi, 5), rng.normal(0, 2, (5, 2))
    recovered = align_images(transform_images(images, theta, shift), theta, shift)
    for a, b in zip(recovered, images):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97
