"""One frame for every class: the frame between two decoded classes is followed along the latent path (where the
two end images alone mislead), and poses moved into it draw the same particles from the reference class
(`analyze --align-classes` itself: tests/test_analyze.py)."""

import numpy as np

from emgroup.analysis.frames import class_frames, to_common_frame
from emgroup.analysis.metrics import image_correlation
from emgroup.data.poses import rotate_2d
from emgroup.data.transforms import transform_images

BOX = 40


def turning_generator(blobs_at, turn: float, move):
    """decode(z (n, 1)) -> images (n, D, D) of Gaussian blobs ``blobs_at(t) -> [(cx, cy, weight, 2 variance)]``
    drawn in a frame that turns by ``turn`` rad and moves by ``move`` px over z = 0 -> 1, as a coordinate
    generator would draw them: decode(z)(x) = canonical_z(R(turn z) x + move z)."""
    y, x = np.mgrid[:BOX, :BOX] - BOX // 2

    def draw(t):
        centres = np.array([blob[:2] for blob in blobs_at(t)], dtype=float)
        at = rotate_2d(np.full(len(centres), -turn * t), centres - np.asarray(move) * t)  # R(-a)(c - s)
        return sum(w * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / s)
                   for (cx, cy), (_, _, w, s) in zip(at, blobs_at(t)))

    return lambda z: np.stack([draw(t) for t in np.asarray(z)[:, 0]]).astype(np.float32)


ASYMMETRIC = [(0, 0, 1.0, 8.0), (8, 0, 0.7, 8.0), (0, 5, 0.5, 8.0), (-4, -6, 0.3, 8.0)]


def test_frames_between_classes_and_poses_in_the_common_frame():
    a0, s0 = 2.5, np.array([1.5, -2.0])  # a turn of 143 degrees, followed through the latent path
    decode = turning_generator(lambda t: ASYMMETRIC, a0, s0)
    reference, other = decode(np.array([[0.0], [1.0]]))  # other(x) = reference(R(a0) x + s0)
    centres, counts = np.array([[1.0], [0.0], [1.0]]), np.array([5, 10, 3])
    angle, shift = class_frames(decode, centres, counts)
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


def test_the_path_keeps_the_frame_where_the_end_images_mislead():
    """A domain that fades out on one side and in on the other of a body symmetric under a half turn: the two end
    images match best half a turn away from their true frames, the steps of the path do not."""
    body = [(-5, 0, 1.0, 10.0), (5, 0, 1.0, 10.0), (0, 3, 0.15, 6.0)]
    blobs_at = lambda t: body + [(0, 10, 1.0 - t, 6.0), (0, -10, t, 6.0)]  # noqa: E731
    a0 = 0.5
    decode = turning_generator(blobs_at, a0, [0.0, 0.0])
    centres, counts = np.array([[0.0], [1.0]]), np.array([10, 5])
    direct, _ = class_frames(decode, centres, counts, shifts=False, steps=1)
    followed, _ = class_frames(decode, centres, counts, shifts=False)
    assert abs(abs(direct[1] + a0) - np.pi) < np.radians(10.0)  # half a turn off
    assert abs(followed[1] + a0) < np.radians(3.0)


def test_without_shifts_only_the_angle_is_searched():
    decode = turning_generator(lambda t: ASYMMETRIC, -1.2, [0.0, 0.0])
    angle, shift = class_frames(decode, np.array([[0.0], [1.0]]), np.array([2, 1]), shifts=False)
    assert not shift.any() and abs(angle[1] - 1.2) < np.radians(1.5)
