"""Evaluation metrics against known truth: pose correlations, clustering accuracy, latent-conformation correlation,
image correlation and Fourier ring correlation (FRC).

All functions take numpy arrays and return Python floats (or dicts of them; per-image figures as arrays). Angles
are in radians, shifts in pixels. The definitions follow the papers whose numbers we compare with (see ``../shared/DESIGN.md``).
"""

import numpy as np
from scipy import stats
from scipy.optimize import linear_sum_assignment
from sklearn.metrics.cluster import contingency_matrix


def circular_correlation(a, b) -> float:
    """Jammalamadaka–Sengupta circular correlation of two angle samples (N,) in radians, in [-1, 1].

    ``sum sin(a - mean_a) sin(b - mean_b) / sqrt(sum sin^2(a - mean_a) sum sin^2(b - mean_b))`` with circular
    means (as astropy's ``circcorrcoef``, which TARGET-VAE's evaluation used); invariant to adding a constant to
    either sample and to wrapping by 2 pi. For nearly uniform samples the circular means are ill-defined and so
    is this statistic: read :func:`circular_correlation_uniform` there.
    """
    sin_a, sin_b = _centred_sines(a), _centred_sines(b)
    return float(np.sum(sin_a * sin_b) / np.sqrt(np.sum(sin_a**2) * np.sum(sin_b**2)))


def circular_correlation_uniform(a, b) -> float:
    """Jammalamadaka–Sengupta circular correlation for uniform marginals (Topics in Circular Statistics, 2001,
    p. 177), in [-1, 1]: ``(R(a - b) - R(a + b)) / (2 sqrt(sum sin^2(a - mean_a) sum sin^2(b - mean_b)))`` with
    ``R(x) = |sum exp(i x)|``. It replaces the ill-defined circular means by those that maximise the correlation,
    so on angles spread over the whole circle it is stable where :func:`circular_correlation` swings with the
    noise (its sign and size then depend on the arbitrary sample means); ``b = a + c + noise(sigma)`` gives about
    ``exp(-sigma^2 / 2)``, ``b = c - a`` gives -1.
    """
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    sin_a, sin_b = _centred_sines(a), _centred_sines(b)
    resultant_minus, resultant_plus = np.abs(np.exp(1j * (a - b)).sum()), np.abs(np.exp(1j * (a + b)).sum())
    return float((resultant_minus - resultant_plus) / (2 * np.sqrt(np.sum(sin_a**2) * np.sum(sin_b**2))))


def _centred_sines(angles) -> np.ndarray:
    """``sin(angle - circular mean)`` of an angle sample (N,) in radians, flattened."""
    angles = np.asarray(angles, dtype=float).ravel()
    return np.sin(angles - stats.circmean(angles, high=np.pi, low=-np.pi))


def pearson(a, b) -> float:
    """Pearson correlation of two samples (N,)."""
    return float(stats.pearsonr(np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel())[0])


def clustering_accuracy(labels_true, labels_pred) -> float:
    """Fraction of samples whose cluster maps to their label under the best one-to-one cluster <-> label
    assignment (Hungarian algorithm on the contingency table). Label values are arbitrary (any hashable)."""
    table = contingency_matrix(np.asarray(labels_true), np.asarray(labels_pred))
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def best_latent_correlation(z, truth) -> tuple[float, int]:
    """``(|r|, dim)``: the largest absolute Pearson correlation between one latent dimension of ``z`` (N, k) and
    a scalar ``truth`` (N,) (e.g. the true conformation), and that dimension (0-based)."""
    z = np.asarray(z, dtype=float).reshape(len(truth), -1)
    r = np.abs([pearson(z[:, k], truth) if np.ptp(z[:, k]) > 0 else 0.0 for k in range(z.shape[1])])
    return float(r.max()), int(r.argmax())


def pose_metrics(theta_pred, shift_pred, theta_true, shift_true) -> dict[str, float]:
    """Rotation circular correlation (as published, and the version for uniform angles) and translation Pearson
    correlation per axis between predicted and true in-plane poses (theta (N,) radians, shift (N, 2) pixels
    (x, y)); either shift may be None (then skipped)."""
    out = {"rotation_circular_correlation": circular_correlation(theta_pred, theta_true),
           "rotation_circular_correlation_uniform": circular_correlation_uniform(theta_pred, theta_true)}
    if shift_pred is not None and shift_true is not None:
        shift_pred, shift_true = np.asarray(shift_pred).reshape(-1, 2), np.asarray(shift_true).reshape(-1, 2)
        out |= {f"translation_pearson_{axis}": pearson(shift_pred[:, i], shift_true[:, i])
                for i, axis in enumerate("xy")}
    return out


def image_correlation(a, b) -> np.ndarray:
    """Per-image Pearson correlation (N,) of two image stacks (N, D, D) (scale- and offset-free)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return np.sum(a * b, 1) / np.sqrt(np.sum(a * a, 1) * np.sum(b * b, 1))


def fourier_ring_correlation(a, b) -> np.ndarray:
    """Fourier ring correlation (..., D // 2 + 1) of image stacks ``a`` and ``b`` (..., D, D), pair by pair: ring k
    holds the frequencies of radius within half a step of k / (D · apix) Å⁻¹ (ring 0: the mean)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    box = a.shape[-1]
    fa, fb = np.fft.rfft2(a), np.fft.rfft2(b)
    ky, kx = np.meshgrid(np.fft.fftfreq(box) * box, np.fft.rfftfreq(box) * box, indexing="ij")
    ring = np.rint(np.hypot(ky, kx)).astype(int)
    # (frequencies, rings): rfft2 holds each column but kx = 0 (and kx = D/2, D even) for two conjugate halves
    twice = np.where((kx == 0) | (kx == box / 2), 1.0, 2.0)
    rings = (ring.ravel()[:, None] == np.arange(box // 2 + 1)) * twice.ravel()[:, None]

    def ring_sum(values):
        return values.reshape(*values.shape[:-2], -1) @ rings

    cross = ring_sum(np.real(fa * np.conj(fb)))
    return cross / np.sqrt(ring_sum(np.abs(fa) ** 2) * ring_sum(np.abs(fb) ** 2))


def frc_resolution(frc, box: int, apix: float, threshold: float = 0.5) -> float:
    """Resolution (Å) where an FRC curve ``frc`` (D // 2 + 1,) of images of ``box`` pixels of ``apix`` Å first falls
    below ``threshold`` (linear between rings, ring 0 ignored); Nyquist (2 · apix) when it never does."""
    frc = np.asarray(frc, dtype=float)
    below = np.flatnonzero(frc[1:] < threshold)
    if not len(below):
        return 2.0 * apix
    k = below[0] + 1
    crossing = k - 1 + (frc[k - 1] - threshold) / (frc[k - 1] - frc[k]) if k > 1 else 1.0
    return box * apix / crossing
