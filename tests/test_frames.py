"""One frame for every class: the frame between two decoded classes is found, and poses moved into it draw the
same particles from the reference class; `analyze` writes the aligned classes."""

import numpy as np

from emgroup.analysis.frames import class_frames, to_common_frame
from emgroup.analysis.metrics import image_correlation
from emgroup.data.poses import rotate_2d
from emgroup.data.transforms import transform_images

BOX = 40


def asymmetric_image() -> np.ndarray:
    y, x = np.mgrid[:BOX, :BOX] - BOX // 2
    return sum(w * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 8.0)
               for cx, cy, w in [(0, 0, 1.0), (8, 0, 0.7), (0, 5, 0.5), (-4, -6, 0.3)]).astype(np.float32)


def test_frames_between_classes_and_poses_in_the_common_frame():
    reference = asymmetric_image()
    a0, s0 = 0.7, np.array([1.5, -2.0])
    other = transform_images(reference[None], a0, s0[None])[0]  # other(x) = reference(R(a0) x + s0)
    angle, shift = class_frames(np.stack([other, reference, other]), np.array([5, 10, 3]))
    assert angle[1] == 0 and not shift[1].any()  # the largest class is the reference
    expected_shift = -rotate_2d(np.array([-a0]), s0[None])[0]  # reference(x) = other(R(-a0) x - R(-a0) s0)
    for k in (0, 2):
        assert abs(angle[k] + a0) < np.radians(3.0)
        np.testing.assert_allclose(shift[k], expected_shift, atol=0.3)
    rng = np.random.default_rng(0)
    theta, t = rng.uniform(-np.pi, np.pi, 6), rng.uniform(-2, 2, (6, 2))
    labels = np.array([0, 0, 0, 2, 2, 2])
    particles = transform_images(np.stack([other] * 6), theta, t)
    moved = to_common_frame(theta, t, labels, (angle, shift))
    inside = np.hypot(*(np.mgrid[:BOX, :BOX] - BOX // 2)) < BOX // 2 - 6
    drawn = transform_images(np.stack([reference] * 6), *moved)
    assert np.all(image_correlation(drawn * inside, particles * inside) > 0.98)


def test_without_shifts_only_the_angle_is_searched():
    reference = asymmetric_image()
    other = transform_images(reference[None], -1.2)[0]
    angle, shift = class_frames(np.stack([reference, other]), np.array([2, 1]), shifts=False)
    assert not shift.any() and abs(angle[1] - 1.2) < np.radians(1.5)
