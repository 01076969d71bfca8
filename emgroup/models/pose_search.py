"""Exhaustive in-plane pose search: the best of K angles x whole-pixel shifts of a decoded image, by likelihood.

For each particle, the generator's canonical image is turned by each of K angles (bilinear, on the device), seen
through the particle's CTF, and compared with the particle at every circular shift at once by FFT
cross-correlation: for a Gaussian likelihood ``-|x - y_d|^2 / (2 sigma^2) = (x . y_d - |y|^2 / 2) / sigma^2 +
const``, for a Bernoulli one ``x . l_d - sum softplus(l) + const`` (logits l), where ``y_d`` is ``y`` moved by d
pixels and only ``x . y_d`` depends on d. Log priors on the angle and on the shift are added; the best (angle,
shift) is the pose (a MAP estimate on the grid), refined between grid points by the vertex of a parabola through
the best score and its neighbours along each axis. This is how RELION's 2D classification and cryoDRGN's pose search
align particles; here it replaces the encoder's pose inference in spatial-VAE (``--pose-search``).
"""

import math

import torch
import torch.nn.functional as F

from emgroup.ctf import ctf_rfft
from emgroup.models.grids import resample_images, rotation_matrix


#: images x angles x pixels scored at a time (bounds the memory of the search: about 20 bytes each)
CHUNK_ELEMENTS = 2**24


def search_inplane_pose(output: torch.Tensor, images: torch.Tensor, likelihood: str, log_sigma=None,
                        ctf_parameters=None, angles: int = 64, angle_log_prior=None, shift_sigma: float | None = 2.0,
                        max_shift: float = 6.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The best in-plane pose ``(theta (N,) rad, shift (N, 2) px (x, y))`` of each image in the convention
    ``image(x) = canonical(R(theta) x + shift)`` (:mod:`emgroup.models.grids`).

    ``output`` (N, D, D) is the generator's canonical output (Gaussian means, or Bernoulli logits) for each
    image (N, D, D); ``log_sigma`` the Gaussian noise log-std; ``ctf_parameters`` (N, 9) rows when the images carry
    a CTF (Gaussian only). ``angles`` = K searches theta in steps of 2 pi / K; ``angle_log_prior(theta) -> (K,)``
    adds a prior (None: uniform). Shifts: every whole pixel within ``max_shift`` px, with the log prior of
    N(0, shift_sigma^2) per axis; ``shift_sigma`` None searches no shift. Computed in fp32, without gradients, in
    chunks of images that bound the memory.
    """
    step = max(1, CHUNK_ELEMENTS // (angles * images.shape[-1] ** 2))
    poses = [_search(output[i:i + step], images[i:i + step], likelihood, log_sigma,
                     None if ctf_parameters is None else ctf_parameters[i:i + step], angles, angle_log_prior,
                     shift_sigma, max_shift) for i in range(0, len(images), step)]
    return torch.cat([theta for theta, _ in poses]), torch.cat([shift for _, shift in poses])


def _search(output, images, likelihood, log_sigma, ctf_parameters, angles, angle_log_prior, shift_sigma, max_shift):
    n, box = images.shape[0], images.shape[-1]
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        output, images = output.float(), images.float()
        theta = torch.arange(angles, device=images.device, dtype=torch.float32) * (2 * math.pi / angles)
        turned = resample_images(output.repeat_interleave(angles, 0), theta.repeat(n), mode="bicubic",
                                 padding="border").view(n, angles, box, box)  # corners keep the background
        spectra = torch.fft.rfft2(turned)
        if likelihood == "gaussian":
            if ctf_parameters is not None:
                spectra = spectra * ctf_rfft(box, ctf_parameters)[:, None]
                turned = torch.fft.irfft2(spectra, s=(box, box))
            scale, constant = torch.exp(-2 * log_sigma.float()), 0.5 * turned.square().sum((-1, -2))
        else:
            scale, constant = 1.0, F.softplus(turned).sum((-1, -2))
        # correlation[t] = sum_p x(p + t) y(p): the image against y moved by t pixels (circularly)
        correlation = torch.fft.irfft2(torch.fft.rfft2(images)[:, None] * spectra.conj(), s=(box, box))
        score = (correlation - constant[..., None, None]) * scale
        if angle_log_prior is not None:
            score = score + angle_log_prior(theta)[:, None, None]
        step = torch.fft.fftfreq(box, 1.0 / box, device=images.device)  # 0, 1, ..., -1 px
        dy, dx = torch.meshgrid(step, step, indexing="ij")
        radius2 = dx**2 + dy**2
        log_prior = (torch.zeros_like(radius2) if shift_sigma is None else -0.5 * radius2 / shift_sigma**2)
        allowed = radius2 == 0 if shift_sigma is None else radius2 <= max_shift**2
        score = score + log_prior.masked_fill(~allowed, -math.inf)
        best = score.flatten(1).argmax(1)
        k, row, column = best // box**2, best // box % box, best % box
        # between the grid points: the vertex of the parabola through the best score and its two neighbours
        at = (torch.arange(n, device=images.device), k, row, column)
        theta = (k + _vertex(score, at, 1)) * (2 * math.pi / angles)
        moved = torch.stack([step[column] + _vertex(score, at, 3), step[row] + _vertex(score, at, 2)], -1)
        # image(x) = y(x - d) = canonical(R(theta) (x - d)): shift = -R(theta) d
        return theta, -(rotation_matrix(theta) @ moved[..., None])[..., 0]


def _vertex(score: torch.Tensor, at: tuple, dim: int) -> torch.Tensor:
    """(n,) offsets in [-0.5, 0.5] along ``dim`` of ``score`` (n, K, D, D) (1 angle, 2 row, 3 column) of the vertex
    of the parabola through the scores at ``at`` (the best (image, angle, row, column) indices) and its circular
    neighbours; 0 where a neighbour is excluded (-inf) or the scores do not curve down."""
    def neighbour(step):
        index = list(at)
        index[dim] = (index[dim] + step) % score.shape[dim]
        return score[tuple(index)]

    below, centre, above = neighbour(-1), neighbour(0), neighbour(1)
    curvature = below - 2 * centre + above
    offset = 0.5 * (below - above) / curvature
    usable = torch.isfinite(offset) & (curvature < 0)
    return torch.where(usable, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))
