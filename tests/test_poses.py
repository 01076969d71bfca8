"""RELION Euler angles and the in-plane model <-> RELION conversion."""

import numpy as np
import pytest
from scipy import ndimage

from emgroup.data.poses import euler_to_matrix, matrix_to_euler, model_from_relion, relion_from_model
from emgroup.data.transforms import transform_images
from emgroup.geometry import random_rotations_numpy


def correlation(a, b):
    return np.corrcoef(np.ravel(a), np.ravel(b))[0, 1]


def test_euler_matrix_is_relions_euler_angles2matrix():
    rot, tilt, psi = np.radians([30.0, 50.0, -70.0])
    ca, sa, cb, sb, cg, sg = np.cos(rot), np.sin(rot), np.cos(tilt), np.sin(tilt), np.cos(psi), np.sin(psi)
    relion = np.array([[cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
                       [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
                       [sb * ca, sb * sa, cb]])  # RELION's Euler_angles2matrix, written out
    np.testing.assert_allclose(euler_to_matrix(30.0, 50.0, -70.0)[0], relion, atol=1e-12)


def test_matrix_to_euler_round_trip_and_gimbal_lock():
    matrices = random_rotations_numpy(200, np.random.default_rng(0))
    rot, tilt, psi = matrix_to_euler(matrices)
    assert tilt.min() >= 0 and tilt.max() <= 180
    np.testing.assert_allclose(euler_to_matrix(rot, tilt, psi), matrices, atol=1e-9)
    # tilt 0 or 180: RELION puts the whole in-plane angle in psi
    rot, tilt, psi = matrix_to_euler(euler_to_matrix([10.0, 10.0], [0.0, 180.0], [40.0, -20.0]))
    np.testing.assert_allclose(rot, [0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(tilt, [0.0, 180.0], atol=1e-9)
    np.testing.assert_allclose(psi, [50.0, -30.0], atol=1e-9)


def test_model_relion_round_trip():
    rng = np.random.default_rng(4)
    theta, shift = rng.uniform(-np.pi, np.pi, 20), rng.normal(0, 3, (20, 2))
    psi, ox, oy = relion_from_model(theta, shift, apix=1.7)
    assert psi.min() >= -180 and psi.max() < 180
    theta2, shift2 = model_from_relion(psi, ox, oy, apix=1.7)
    np.testing.assert_allclose(np.angle(np.exp(1j * (theta2 - theta))), 0.0, atol=1e-12)
    np.testing.assert_allclose(shift2, shift, atol=1e-12)


@pytest.mark.relion
def test_inplane_relion_pose_is_the_model_transform_of_the_canonical_projection(blob_volume, relion_project):
    volume, apix = blob_volume
    psi, ox, oy = np.array([0.0, 30.0, -115.0]), np.array([0.0, 6.0, -3.0]), np.array([0.0, -4.0, 5.0])
    images = relion_project(volume, apix, {"rlnAngleRot": [0.0] * 3, "rlnAngleTilt": [0.0] * 3,
                                           "rlnAnglePsi": psi, "rlnOriginXAngst": ox, "rlnOriginYAngst": oy})
    canonical = np.repeat(images[:1], 2, axis=0)
    expected = transform_images(canonical, *model_from_relion(psi[1:], ox[1:], oy[1:], apix))
    for got, want in zip(images[1:], expected):
        assert correlation(got, want) >= 0.99
    # the opposite shift sign must not match (the test can tell the conventions apart)
    wrong = transform_images(canonical, *model_from_relion(psi[1:], -ox[1:], -oy[1:], apix))
    assert max(correlation(g, w) for g, w in zip(images[1:], wrong)) < 0.95


@pytest.mark.relion
def test_euler_matrix_rotates_the_volume_as_relion_projects_it(blob_volume, relion_project):
    volume, apix = blob_volume
    angles = np.array([[20.0, 60.0, -40.0], [-150.0, 120.0, 75.0]])
    images = relion_project(volume, apix, {"rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1],
                                           "rlnAnglePsi": angles[:, 2]})
    centre = np.full(3, volume.shape[0] // 2)
    for matrix, image in zip(euler_to_matrix(*angles.T), images):
        # rotated(r) = V(A^T r) in (x, y, z); the array axes are (z, y, x)
        inverse = matrix.T[::-1, ::-1]
        rotated = ndimage.affine_transform(volume, inverse, offset=centre - inverse @ centre, order=1)
        assert correlation(rotated.sum(axis=0), image) >= 0.99
