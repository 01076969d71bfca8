"""Shared geometry: quaternions give scipy's rotation matrices, random rotations are Haar-uniform (and the numpy draws are seeded), volume rotation has the grid convention out(x) = vol(R x) that
`emgroup simulate --volumes` data follow, masks and angle wrapping."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.transform import Rotation

from emgroup import geometry
from emgroup.data.poses import matrix_to_euler


def test_quaternions_rotate_like_the_matrices():
    matrices = geometry.random_rotations_numpy(50, np.random.default_rng(1))
    q = Rotation.from_matrix(matrices).as_quat(scalar_first=True)  # (w, x, y, z)
    np.testing.assert_allclose(geometry.quaternion_to_matrix(torch.from_numpy(q)).numpy(), matrices, atol=1e-12)
    # v' = q v q* computed with the Hamilton product, independently of scipy
    v = np.random.default_rng(2).normal(size=(50, 3))
    w, u = q[:, :1], q[:, 1:]
    rotated = v + 2 * w * np.cross(u, v) + 2 * np.cross(u, np.cross(u, v))
    np.testing.assert_allclose(rotated, np.einsum("nij,nj->ni", matrices, v), atol=1e-12)
    # 180-degree turns, and quaternions of any norm (normalised first)
    half_turns = geometry.quaternion_to_matrix(torch.tensor([[0, 1, 0, 0], [0, 0, 0, 2.0]], dtype=torch.float64))
    np.testing.assert_allclose(half_turns.numpy(), [np.diag([1.0, -1, -1]), np.diag([-1.0, -1, 1])], atol=1e-12)


def test_numpy_random_rotations_are_seeded_and_uniform():
    a = geometry.random_rotations_numpy(4000, np.random.default_rng(3))
    np.testing.assert_array_equal(a, geometry.random_rotations_numpy(4000, np.random.default_rng(3)))
    np.testing.assert_allclose(np.linalg.det(a), 1.0, atol=1e-9)
    assert np.abs(a.mean(axis=0)).max() < 0.05  # the Haar measure has E[R] = 0
    # uniform directions: cos(tilt) is uniform on [-1, 1]
    _, tilt, _ = matrix_to_euler(a)
    assert np.histogram(np.cos(np.radians(tilt)), bins=4, range=(-1, 1))[0].min() > 900


def test_random_rotations_are_haar_uniform_and_respect_the_angle_limit():
    generator = torch.Generator().manual_seed(0)
    r = geometry.random_rotations(4000, generator=generator, dtype=torch.float64)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(4000, 3, 3), atol=1e-12)
    assert torch.allclose(torch.det(r), torch.ones(4000, dtype=torch.float64))
    angle = geometry.rotation_angle(r).numpy()
    assert stats.kstest(angle, lambda w: (w - np.sin(w)) / np.pi).pvalue > 1e-3  # Haar marginal of the angle
    assert abs(r.mean(0)).max() < 0.05  # a uniform rotation has mean matrix 0
    limit = math.radians(60)
    angle = geometry.rotation_angle(geometry.random_rotations(4000, limit, generator, dtype=torch.float64)).numpy()
    assert angle.max() <= limit + 1e-9
    assert stats.kstest(angle, lambda w: (w - np.sin(w)) / (limit - np.sin(limit))).pvalue > 1e-3
    low = math.radians(90)  # the Haar marginal truncated to [90, 180] degrees
    angle = geometry.rotation_angle(geometry.random_rotations(4000, math.pi, generator, dtype=torch.float64,
                                                              min_angle=low)).numpy()
    assert angle.min() >= low - 1e-9
    floor = low - np.sin(low)
    assert stats.kstest(angle, lambda w: (w - np.sin(w) - floor) / (np.pi - floor)).pvalue > 1e-3


def test_wrap_angle_is_the_same_for_numpy_and_torch():
    angles = np.array([-7.0, -math.pi, -1.0, 0.0, math.pi, 4.0, 10.0])
    wrapped = geometry.wrap_angle(angles)
    assert isinstance(wrapped, np.ndarray) and wrapped.min() >= -math.pi and wrapped.max() < math.pi
    np.testing.assert_allclose(np.exp(1j * wrapped), np.exp(1j * angles), atol=1e-12)
    np.testing.assert_array_equal(geometry.wrap_angle(torch.from_numpy(angles)).numpy(), wrapped)


@pytest.mark.parametrize("box", [7, 8, 50])
def test_ball_mask_is_the_open_inscribed_disc_and_ball(box):
    c = box // 2
    disc = geometry.ball_mask(box).numpy()
    y, x = np.mgrid[:box, :box]
    np.testing.assert_array_equal(disc, ((x - c) ** 2 + (y - c) ** 2 < box**2 / 4).astype(np.float32))
    ball = geometry.ball_mask(box, 3).numpy()
    np.testing.assert_array_equal(ball[c], disc)  # the central section of the ball is the disc
    assert ball[0].sum() < disc.sum()
    # about the array's geometric centre the disc is symmetric under every flip and quarter turn
    centred = geometry.ball_mask(box, centre=(box - 1) / 2).numpy()
    for turned in (centred[::-1], centred[:, ::-1], np.rot90(centred)):
        np.testing.assert_array_equal(turned, centred)


@pytest.fixture
def volume(blob_volume):
    return torch.from_numpy(blob_volume[0])[None]


def _relative_error(a, b, mask):
    return float(((a - b) * mask).norm() / (b * mask).norm())


def test_quarter_turn_is_an_exact_voxel_permutation(volume):
    quarter = torch.tensor([[[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]])  # (x, y, z) -> (-y, x, z)
    out = geometry.rotate_volumes(volume, quarter, mask=False)[0]
    # out[z, i, j] = vol[z, i' = j, j' = 2c - i] about c = D // 2 (row i = 0 has no partner inside the box)
    box, c = volume.shape[-1], volume.shape[-1] // 2
    expected = volume[0].transpose(1, 2)[:, 2 * c - torch.arange(1, box)]
    assert torch.allclose(out[:, 1:], expected, atol=1e-6)


def test_rotation_then_inverse_returns_the_volume_inside_the_ball(volume):
    mask = geometry.ball_mask(volume.shape[-1])
    r = geometry.random_rotations(3, generator=torch.Generator().manual_seed(1))
    turned = geometry.rotate_volumes(volume.expand(3, -1, -1, -1), r)
    assert (turned * (1 - mask)).abs().max() == 0
    back = geometry.rotate_volumes(turned, r.transpose(1, 2))
    wrong = geometry.rotate_volumes(turned, r)
    for k in range(3):
        assert _relative_error(back[k], volume[0], mask) < 0.15  # two trilinear interpolations of 2-px blobs
        assert _relative_error(wrong[k], volume[0], mask) > 0.5
    composed = geometry.rotate_volumes(geometry.rotate_volumes(volume, r[:1]), r[1:2])  # vol(R0 R1 x)
    assert _relative_error(composed[0], geometry.rotate_volumes(volume, r[:1] @ r[1:2])[0], mask) < 0.15


def test_matches_the_simulated_volumes_convention(blob_volume):
    """A volume turned by RELION's A, as simulate writes it (cubic spline), is rotate_volumes(vol, A^T)."""
    vol = blob_volume[0]
    a = geometry.random_rotations_numpy(2, np.random.default_rng(3))
    reference = torch.from_numpy(np.stack([geometry.rotate_volume_numpy(vol, matrix.T) for matrix in a]))
    ours = geometry.rotate_volumes(torch.from_numpy(vol)[None].expand(2, -1, -1, -1),
                                   torch.from_numpy(a.transpose(0, 2, 1)).float())
    mask = geometry.ball_mask(vol.shape[-1])
    for k in range(2):
        assert _relative_error(ours[k], reference[k], mask) < 0.1
        assert _relative_error(ours[k], reference[1 - k], mask) > 0.5


@pytest.mark.parametrize("spec, parsed", [("uniform", ("uniform", 0.0)), ("none", ("none", 0.0)),
                                          ("normal:30", ("normal", 30.0)), ("normal:2.5e-1", ("normal", 0.25))])
def test_angle_distribution_strings(spec, parsed):
    assert geometry.parse_angle_distribution(spec, "--rotation", plain=("uniform", "none")) == parsed


@pytest.mark.parametrize("spec", ["normal", "normal:", "normal:0", "normal:-3", "normal:x", "normal:nan", "normal:inf",
                                  "uniform:3", "gauss:10", "none"])
def test_bad_angle_distribution_is_one_message_naming_the_option(spec):
    with pytest.raises(ValueError) as error:
        geometry.parse_angle_distribution(spec, "--theta-prior")
    assert str(error.value) == (f"--theta-prior: {spec!r} is not uniform or normal:SIGMA_DEG (degrees, "
                                "0 < SIGMA_DEG < inf, e.g. normal:30)")
