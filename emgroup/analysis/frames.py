"""One frame for every class: the rotation and shift that bring each cluster's decoded image onto the largest
cluster's, applied to its particles' poses.

A generator of z draws each conformation in a canonical frame of its own: nothing in the models ties the frame of
one latent value to another's (RELION's 2D classes have the same freedom). `emgroup analyze` follows the angle along
the straight latent path from the most populated cluster's centre to each other centre: the images decoded at
consecutive points of the path differ little, so the turn between them (a grid search over 1-degree steps refined by
least squares, on images Fourier-padded to twice their sampling) is well defined even where the two end
conformations' images agree only in part, and the turns add up. The shift then puts the classes' centres of density
on each other. Each particle's pose moves into that frame, so poses, class averages and decoded classes are
comparable across classes.
"""

import numpy as np
import torch

from emgroup.data.poses import rotate_2d
from emgroup.data.preprocess import fourier_pad
from emgroup.models.grids import canonical_centroid, resample_images
from emgroup.models.pose_search import search_inplane_pose

#: angles searched when aligning two decoded images (1-degree steps)
FRAME_ANGLES = 360
#: images are aligned at this multiple of their sampling (Fourier padding): bicubic resampling at the box's own
#: sampling pulls small turns towards 0 (a 4.3-degree step measured as 4.0-4.4 degrees)
UPSAMPLE = 2
#: steps of the latent path between two cluster centres along which the frame is followed
PATH_STEPS = 16


def class_frames(decode, centres: np.ndarray, counts: np.ndarray, shifts: bool = True,
                 steps: int = PATH_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """``(angle (K,) rad in [-pi, pi), shift (K, 2) px)`` of each class's frame against the largest class's, with
    ``decode(z (n, k)) -> (n, D, D)`` the generator's canonical images and ``centres`` (K, k) the classes' latent
    centres: ``G(ref)(x) ~ G(k)(R(angle[k]) x + shift[k])``. The angle is followed through ``steps`` equal steps
    of the straight path between the centres (1: the two end images aligned directly); the shift puts the centres
    of positive density of the two images on each other (0 unless ``shifts``), as RELION centres its classes."""
    reference = int(np.argmax(counts))
    fractions = np.linspace(0.0, 1.0, steps + 1)[:, None, None]
    path = centres[reference] + fractions * (centres - centres[reference])  # (steps + 1, K, k)
    decoded = decode(path.reshape(-1, centres.shape[1]))
    images = torch.as_tensor(fourier_pad(decoded, UPSAMPLE * decoded.shape[-1]))  # finer: unbiased small turns
    images = images.view(steps + 1, len(centres), *images.shape[1:])
    angle = sum(_turn(far, near, shifts) for near, far in zip(images[:-1], images[1:]))
    angle = np.remainder(angle + np.pi, 2 * np.pi) - np.pi
    angle[reference] = 0.0
    if not shifts:
        return angle, np.zeros((len(centres), 2))
    centroid = canonical_centroid(torch.as_tensor(decoded[-len(centres):])).double().numpy()  # (K, 2) px
    # G(ref)'s point c maps onto G(k)'s R(angle) c + shift
    return angle, centroid - rotate_2d(angle, np.broadcast_to(centroid[reference], centroid.shape))


def _turn(far: torch.Tensor, near: torch.Tensor, shifts: bool) -> np.ndarray:
    """``turn`` (n,) rad with ``near(x) ~ far(R(turn) x + move)`` for images (n, D, D) (``move`` (n, 2) px found
    with it, 0 unless ``shifts``): the grid search, then least squares (L-BFGS on the bicubic resampling): the
    grid's separate sub-step refinement of angle and shift is biased when both are small (a 9-degree turn with a
    0.16 px move measured as 8.2 degrees)."""
    turn, move = search_inplane_pose(far, near, "gaussian", torch.tensor(0.0), None, FRAME_ANGLES,
                                     shift_sigma=float("inf") if shifts else None, max_shift=far.shape[-1] / 4)
    turn, move = turn.double().requires_grad_(), move.double().requires_grad_(shifts)
    far, near = far.double(), near.double()
    optimizer = torch.optim.LBFGS([turn, move] if shifts else [turn], max_iter=100, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = (resample_images(far, turn, move, "bicubic", "border") - near).square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    return turn.detach().numpy()


def to_common_frame(theta: np.ndarray, shift: np.ndarray, labels: np.ndarray, frames) -> tuple:
    """Poses ``(theta (N,) rad, shift (N, 2) px)`` of particles in classes ``labels`` moved into the common frame
    of :func:`class_frames`: image(x) = G_k(R(theta) x + t) = G_ref(R(theta - a) x + R(-a) (t - s))."""
    angle, frame_shift = (np.asarray(f)[labels] for f in frames)
    return theta - angle, rotate_2d(-angle, shift - frame_shift)
