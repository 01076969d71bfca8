"""SO(3) helpers: quaternions agree with scipy's (via emgroup.data.poses), random rotations are Haar-uniform, and
volume rotation has the grid convention out(x) = vol(R x) that `emgroup simulate --volumes` data follow."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from emgroup.data import poses, simulate
from emgroup.models import so3


def test_quaternions_match_scipy_and_round_trip():
    rotations = poses.random_rotations(200, np.random.default_rng(0))
    # 180-degree turns, where the naive trace formula loses the signs
    half_turns = poses.quaternion_to_matrix([[0, 1, -1, 0], [0, 0, 0, 1], [0, 1, 2, 3]])
    matrices = torch.from_numpy(np.concatenate([rotations, half_turns]))
    q = so3.matrix_to_quaternion(matrices)
    assert np.allclose(q.numpy(), poses.matrix_to_quaternion(matrices.numpy()), atol=1e-12)
    assert torch.allclose(so3.quaternion_to_matrix(q), matrices, atol=1e-12)


def test_random_rotations_are_haar_uniform_and_respect_the_angle_limit():
    generator = torch.Generator().manual_seed(0)
    r = so3.random_rotations(4000, generator=generator, dtype=torch.float64)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(4000, 3, 3), atol=1e-12)
    assert torch.allclose(torch.det(r), torch.ones(4000, dtype=torch.float64))
    angle = so3.rotation_angle(r).numpy()
    assert stats.kstest(angle, lambda w: (w - np.sin(w)) / np.pi).pvalue > 1e-3  # Haar marginal of the angle
    assert abs(r.mean(0)).max() < 0.05  # a uniform rotation has mean matrix 0
    limit = math.radians(60)
    angle = so3.rotation_angle(so3.random_rotations(4000, limit, generator, dtype=torch.float64)).numpy()
    assert angle.max() <= limit + 1e-9
    assert stats.kstest(angle, lambda w: (w - np.sin(w)) / (limit - np.sin(limit))).pvalue > 1e-3


@pytest.fixture
def volume(blob_volume):
    return torch.from_numpy(blob_volume[0])[None]


def _relative_error(a, b, mask):
    return float(((a - b) * mask).norm() / (b * mask).norm())


def test_quarter_turn_is_an_exact_voxel_permutation(volume):
    quarter = torch.tensor([[[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]])  # (x, y, z) -> (-y, x, z)
    out = so3.rotate_volumes(volume, quarter, mask=False)[0]
    # out[z, i, j] = vol[z, i' = j, j' = 2c - i] about c = D // 2 (row i = 0 has no partner inside the box)
    box, c = volume.shape[-1], volume.shape[-1] // 2
    expected = volume[0].transpose(1, 2)[:, 2 * c - torch.arange(1, box)]
    assert torch.allclose(out[:, 1:], expected, atol=1e-6)


def test_rotation_then_inverse_returns_the_volume_inside_the_ball(volume):
    mask = so3.ball_mask(volume.shape[-1])
    r = so3.random_rotations(3, generator=torch.Generator().manual_seed(1))
    turned = so3.rotate_volumes(volume.expand(3, -1, -1, -1), r)
    assert (turned * (1 - mask)).abs().max() == 0
    back = so3.rotate_volumes(turned, r.transpose(1, 2))
    wrong = so3.rotate_volumes(turned, r)
    for k in range(3):
        assert _relative_error(back[k], volume[0], mask) < 0.15  # two trilinear interpolations of 2-px blobs
        assert _relative_error(wrong[k], volume[0], mask) > 0.5
    composed = so3.rotate_volumes(so3.rotate_volumes(volume, r[:1]), r[1:2])  # vol(R0 R1 x)
    assert _relative_error(composed[0], so3.rotate_volumes(volume, r[:1] @ r[1:2])[0], mask) < 0.15


def test_matches_the_simulated_volumes_convention(blob_volume):
    """A volume turned by RELION's A, as simulate writes it (cubic spline), is rotate_volumes(vol, A^T)."""
    vol = blob_volume[0]
    a = poses.random_rotations(2, np.random.default_rng(3))
    reference = torch.from_numpy(np.stack(list(simulate.rotate_volumes(vol[None], a, [0, 0]))))
    ours = so3.rotate_volumes(torch.from_numpy(vol)[None].expand(2, -1, -1, -1),
                              torch.from_numpy(a.transpose(0, 2, 1)).float())
    mask = so3.ball_mask(vol.shape[-1])
    for k in range(2):
        assert _relative_error(ours[k], reference[k], mask) < 0.1
        assert _relative_error(ours[k], reference[1 - k], mask) > 0.5
