"""One frame for every class: the rotation and shift that bring each cluster's decoded image onto the largest
cluster's, applied to its particles' poses.

A generator of z draws each conformation in a canonical frame of its own: nothing in the models ties the frame of
one latent value to another's (RELION's 2D classes have the same freedom). `emgroup analyze` aligns the decoded
image of every cluster centre with the most populated cluster's (:func:`emgroup.models.pose_search.
search_inplane_pose`, 1-degree steps refined between them, shifts within a quarter of the box) and moves each
particle's pose into that frame, so poses, class averages and decoded classes are comparable across classes.
"""

import numpy as np
import torch

from emgroup.data.poses import rotate_2d
from emgroup.models.pose_search import search_inplane_pose

#: angles searched when aligning two decoded classes (1-degree steps)
FRAME_ANGLES = 360


def class_frames(decoded: np.ndarray, counts: np.ndarray, shifts: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(angle (K,) rad in [-pi, pi), shift (K, 2) px)`` of each class's frame against the largest class's: with ``decoded``
    (K, D, D) the classes' canonical images, ``decoded[ref](x) ~ decoded[k](R(angle[k]) x + shift[k])`` (shift 0
    unless ``shifts``)."""
    reference = int(np.argmax(counts))
    images = torch.as_tensor(decoded, dtype=torch.float32)
    target = images[reference].expand_as(images)
    angle, shift = search_inplane_pose(images, target, "gaussian", torch.tensor(0.0), None, FRAME_ANGLES,
                                       shift_sigma=float("inf") if shifts else None, max_shift=images.shape[-1] / 4)
    angle, shift = np.remainder(angle.numpy().astype(float) + np.pi, 2 * np.pi) - np.pi, shift.numpy().astype(float)
    angle[reference], shift[reference] = 0.0, 0.0
    return angle, shift


def to_common_frame(theta: np.ndarray, shift: np.ndarray, labels: np.ndarray, frames) -> tuple:
    """Poses ``(theta (N,) rad, shift (N, 2) px)`` of particles in classes ``labels`` moved into the common frame
    of :func:`class_frames`: image(x) = G_k(R(theta) x + t) = G_ref(R(theta - a) x + R(-a) (t - s))."""
    angle, frame_shift = (np.asarray(f)[labels] for f in frames)
    return theta - angle, rotate_2d(-angle, shift - frame_shift)
