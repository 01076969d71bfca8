"""Evaluation metrics: circular correlation, clustering accuracy, latent/pose correlations."""

import itertools

import numpy as np
import pytest

from emgroup.analysis.metrics import (best_latent_correlation, circular_correlation, circular_correlation_uniform,
                                      clustering_accuracy, fourier_ring_correlation, frc_resolution,
                                      image_correlation, pearson, pose_metrics)
from emgroup.geometry import wrap_angle


def test_circular_correlation_sign_offset_and_wrapping():
    rng = np.random.default_rng(0)
    a = rng.uniform(-np.pi, np.pi, 2000)
    assert circular_correlation(a, a + 1.3) == pytest.approx(1.0)  # a constant offset is not penalised
    assert circular_correlation(a, a + 2 * np.pi * rng.integers(-3, 3, a.size)) == pytest.approx(1.0)
    assert circular_correlation(a, -a) == pytest.approx(-1.0)
    assert abs(circular_correlation(a, rng.uniform(-np.pi, np.pi, a.size))) < 0.1
    concentrated = rng.vonmises(0.5, 2.0, a.size)
    noisy = circular_correlation(concentrated, concentrated + rng.normal(0, 0.5, a.size))
    assert 0.5 < noisy < 0.95


def test_circular_correlation_uniform_is_stable_on_uniform_angles():
    rng = np.random.default_rng(2)
    a = rng.uniform(-np.pi, np.pi, 20000)
    assert circular_correlation_uniform(a, a + 1.3) == pytest.approx(1.0, abs=0.03)
    assert circular_correlation_uniform(a, 2.0 - a) == pytest.approx(-1.0, abs=0.03)
    assert abs(circular_correlation_uniform(a, rng.uniform(-np.pi, np.pi, a.size))) < 0.03
    assert circular_correlation_uniform(a, a + rng.normal(0, 0.5, a.size)) == pytest.approx(np.exp(-0.125), abs=0.03)
    # 70% of predictions right to 0.1 rad, 30% random: the published statistic's value depends on the draw (its
    # circular means are noise), the uniform version's does not
    published, uniform = [], []
    for _ in range(10):
        a = rng.uniform(-np.pi, np.pi, 2000)
        b = a + 0.7 + rng.normal(0, 0.1, a.size)
        wrong = rng.random(a.size) < 0.3
        b[wrong] = rng.uniform(-np.pi, np.pi, wrong.sum())
        published.append(circular_correlation(a, b))
        uniform.append(circular_correlation_uniform(a, b))
    assert np.ptp(published) > 0.5
    assert np.ptp(uniform) < 0.1 and np.mean(uniform) == pytest.approx(0.7 * np.exp(-0.005), abs=0.03)


def test_circular_correlation_is_pearson_for_concentrated_angles():
    # sin(x) ~ x for small deviations: JS correlation tends to the ordinary one
    rng = np.random.default_rng(1)
    a = rng.normal(0, 0.01, 1000)
    b = a + rng.normal(0, 0.01, 1000)
    assert circular_correlation(a, b) == pytest.approx(pearson(a, b), abs=1e-3)


def test_clustering_accuracy_matches_brute_force_assignment():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 4, 300)
    predicted = np.where(rng.random(300) < 0.6, (truth * 3 + 1) % 5, rng.integers(0, 5, 300))  # 5 clusters
    best = max(np.mean(np.array([mapping.get(p, -1) for p in predicted]) == truth)
               for perm in itertools.permutations(range(5), 4)
               for mapping in [dict(zip(perm, range(4)))])
    assert clustering_accuracy(truth, predicted) == pytest.approx(best)
    assert clustering_accuracy(truth, np.array(["abcd"[t] for t in truth])) == 1.0  # any relabelling


def test_best_latent_correlation_finds_the_dimension_and_ignores_sign():
    rng = np.random.default_rng(3)
    truth = rng.random(500)
    z = rng.normal(size=(500, 4))
    z[:, 2] = -3 * truth + rng.normal(0, 0.05, 500)
    z[:, 3] = 1.0  # a constant dimension (collapsed latent) is not an error
    r, dim = best_latent_correlation(z, truth)
    assert dim == 2 and r > 0.98


def test_pose_metrics_and_image_correlation():
    rng = np.random.default_rng(4)
    theta, shift = rng.uniform(-np.pi, np.pi, 400), rng.normal(0, 3, (400, 2))
    out = pose_metrics(wrap_angle(theta + 0.4), shift + rng.normal(0, 0.3, shift.shape), theta, shift)
    assert out["rotation_circular_correlation"] == pytest.approx(1.0)
    assert out["translation_pearson_x"] > 0.98 and out["translation_pearson_y"] > 0.98
    assert out["rotation_circular_correlation_uniform"] == pytest.approx(1.0, abs=0.1)
    assert set(pose_metrics(theta, None, theta, shift)) == {"rotation_circular_correlation",
                                                            "rotation_circular_correlation_uniform"}
    images = rng.normal(size=(3, 8, 8))
    assert np.allclose(image_correlation(images, 2 * images + 5), 1.0)
    assert np.all(np.abs(image_correlation(images, rng.normal(size=(3, 8, 8)))) < 0.5)


@pytest.mark.parametrize("box", [8, 9])
def test_fourier_ring_correlation_matches_the_full_spectrum(box):
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(2, 3, box, box))
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    k = np.fft.fftfreq(box) * box
    ring = np.rint(np.hypot(*np.meshgrid(k, k, indexing="ij")))
    expected = [[np.real(np.sum((x * np.conj(y))[ring == r])) / np.sqrt(np.sum(np.abs(x[ring == r]) ** 2)
                                                                     * np.sum(np.abs(y[ring == r]) ** 2))
                 for r in range(box // 2 + 1)] for x, y in zip(fa, fb)]
    assert np.allclose(fourier_ring_correlation(a, b), expected)


def test_fourier_ring_correlation_is_per_ring_and_scale_free():
    rng = np.random.default_rng(6)
    image = rng.normal(size=(16, 16))
    k = np.fft.fftfreq(16) * 16
    ring = np.rint(np.hypot(*np.meshgrid(k, k, indexing="ij")))
    flipped = np.real(np.fft.ifft2(np.fft.fft2(image) * np.where(ring >= 5, -1.0, 1.0)))  # rings 5.. negated
    assert np.allclose(fourier_ring_correlation(image, 3 * flipped), np.where(np.arange(9) >= 5, -1.0, 1.0))


def test_frc_resolution_interpolates_the_crossing():
    curve = [1.0, 0.9, 0.8, 0.6, 0.4, 0.1]
    assert frc_resolution(curve, box=10, apix=2.0) == pytest.approx(10 * 2.0 / 3.5)  # 0.5 halfway from ring 3 to 4
    assert frc_resolution(curve, box=10, apix=2.0, threshold=0.143) == pytest.approx(20 / (4 + 0.257 / 0.3))
    assert frc_resolution([1.0, 0.9, 0.8], box=4, apix=2.0) == 4.0  # never below: Nyquist
