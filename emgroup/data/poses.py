"""Poses: RELION's Euler angles and the in-plane model <-> RELION conversion (quaternions and random rotations:
:mod:`emgroup.geometry`).

RELION's Euler angles (rot, tilt, psi) in degrees are ZYZ; the matrix ``A = euler_to_matrix(rot, tilt, psi)`` is
RELION's ``Euler_angles2matrix``: a particle image is the projection along z of the volume rotated by ``A``,
``image(x, y) = sum_z V(A^T (x, y, z))``, i.e. a point ``p`` of the object lands at ``A p``.

RELION's origin (``rlnOriginXAngst/YAngst``) is the translation that centres the particle: the object's centre
sits at ``-origin`` from the box centre, i.e. the particle is the centred projection translated by ``-origin``,
``image(x) = projection(x + origin)``. In the model convention (``image(x) = canonical(R(theta) x + shift)``, see
:mod:`emgroup.models.grids`) a RELION in-plane pose ``(psi, origin)`` is therefore ``theta = psi`` (radians) and
``shift = R(psi) origin`` (pixels). Both facts are pinned by
tests against ``relion_project``.
"""

import numpy as np
from scipy.spatial.transform import Rotation


def euler_to_matrix(rot, tilt, psi) -> np.ndarray:
    """(N, 3, 3) RELION rotation matrices from Euler angles (N,) in degrees."""
    angles = np.stack(np.broadcast_arrays(*(np.atleast_1d(np.asarray(a, dtype=float)) for a in (rot, tilt, psi))), -1)
    # RELION's A = Rz(psi) Ry(tilt) Rz(rot) with passive (frame) rotations = inverse of scipy's intrinsic ZYZ
    return Rotation.from_euler("ZYZ", angles, degrees=True).inv().as_matrix()


def matrix_to_euler(matrices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rot, tilt, psi) in degrees, each (N,), from (N, 3, 3) RELION matrices; tilt in [0, 180].

    Like RELION's ``Euler_matrix2angles``: when tilt is 0 or 180 the in-plane angle goes to psi and rot = 0.
    """
    a = np.asarray(matrices, dtype=float).reshape(-1, 3, 3)
    sin_tilt = np.hypot(a[:, 0, 2], a[:, 1, 2])
    tilt = np.arctan2(sin_tilt, a[:, 2, 2])
    rot = np.arctan2(a[:, 2, 1], a[:, 2, 0])
    psi = np.arctan2(a[:, 1, 2], -a[:, 0, 2])
    gimbal = sin_tilt < 1e-6
    flip = np.where(a[:, 2, 2] > 0, 1.0, -1.0)  # tilt 0: A = Rz(rot + psi); tilt 180: the x axis is mirrored
    rot = np.where(gimbal, 0.0, rot)
    psi = np.where(gimbal, np.arctan2(-a[:, 1, 0] * flip, a[:, 0, 0] * flip), psi)
    return np.degrees(rot), np.degrees(tilt), np.degrees(psi)


def rotate_2d(theta, vectors) -> np.ndarray:
    """R(theta) @ v for angles (N,) in radians and vectors (N, 2) ordered (x, y)."""
    c, s = np.cos(theta), np.sin(theta)
    x, y = vectors[..., 0], vectors[..., 1]
    return np.stack([c * x - s * y, s * x + c * y], -1)


def relion_from_model(theta_rad, shift_px, apix: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model pose (theta (N,) rad, shift (N, 2) px (x, y)) -> RELION (psi deg, origin x Å, origin y Å), each (N,).

    psi is wrapped to [-180, 180).
    """
    theta = np.atleast_1d(np.asarray(theta_rad, dtype=float))
    origin = rotate_2d(-theta, np.asarray(shift_px, dtype=float).reshape(-1, 2)) * apix
    psi = np.remainder(np.degrees(theta) + 180.0, 360.0) - 180.0
    return psi, origin[:, 0], origin[:, 1]


def model_from_relion(psi_deg, origin_x_A, origin_y_A, apix: float) -> tuple[np.ndarray, np.ndarray]:
    """RELION (psi deg, origin x/y Å), each (N,) -> model pose (theta (N,) rad, shift (N, 2) px (x, y))."""
    theta = np.radians(np.atleast_1d(np.asarray(psi_deg, dtype=float)))
    origin = np.stack(np.broadcast_arrays(np.asarray(origin_x_A, dtype=float), np.asarray(origin_y_A, dtype=float)), -1)
    return theta, rotate_2d(theta, origin.reshape(-1, 2) / apix)
