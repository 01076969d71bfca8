"""Class averages: undoing known poses recovers the canonical images, through the same STAR code path as analyze,
and RELION applying the written poses itself gives the same averages (pins psi and origin signs to RELION's); with
the CTF, the Wiener average shows the particles before the microscope."""

import subprocess

import mrcfile
import numpy as np
import pandas as pd
import pytest

from emgroup.analysis.class_averages import class_averages
from emgroup.analysis.metrics import image_correlation
from emgroup.analysis.pipeline import particles_table
from emgroup.ctf import ctf_parameters, ctf_rfft
from emgroup.data.poses import model_from_relion
from emgroup.data.stack import Stack, write_particles
from emgroup.data.transforms import transform_images
from emgroup.io.star import optics_table

BOX, APIX, PER_CLASS = 32, 2.0, 12


def canonical_images() -> np.ndarray:
    """Three asymmetric images of smooth Gaussian blobs (3, D, D), centred on D // 2."""
    y, x = np.mgrid[:BOX, :BOX] - BOX // 2
    layouts = [[(0, 0, 1.0), (7, 0, 0.7), (0, 4, 0.5)], [(-5, -5, 1.0), (5, 2, 0.6)],
               [(0, 6, 1.0), (3, -6, 0.8), (-7, 1, 0.4), (0, 0, 0.3)]]
    return np.stack([sum(w * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 6.0) for cx, cy, w in layout)
                     for layout in layouts]).astype(np.float32)


@pytest.fixture
def posed_particles(tmp_path, monkeypatch):
    """PER_CLASS copies of each canonical image under known random poses, written as analyze writes its
    particles.star (true poses + classes through `particles_table`); returns (stack, canonical, labels)."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    canonical = canonical_images()
    labels = np.repeat(np.arange(3), PER_CLASS)
    theta, shift = rng.uniform(-np.pi, np.pi, labels.size), rng.uniform(-3, 3, (labels.size, 2))
    images = transform_images(canonical[labels], theta, shift)
    encoding = {"z": rng.normal(size=(labels.size, 2)), "theta": theta, "shift": shift}
    meta = particles_table(pd.DataFrame(index=range(labels.size)), encoding, labels, APIX)
    write_particles("particles.star", [images], meta, optics_table(APIX, BOX), APIX)
    return Stack.open("particles.star"), canonical, labels


def star_pose(stack):
    meta = stack.meta
    return model_from_relion(meta["rlnAnglePsi"], meta["rlnOriginXAngst"], meta["rlnOriginYAngst"], stack.apix)


def test_true_poses_written_to_star_give_the_canonical_images(posed_particles):
    stack, canonical, labels = posed_particles
    assert np.array_equal(stack.meta["rlnClassNumber"].to_numpy(), labels + 1)
    averages, counts = class_averages(stack, stack.meta["rlnClassNumber"].to_numpy() - 1, *star_pose(stack), 3,
                                      batch_size=5, progress=False)
    assert counts.tolist() == [PER_CLASS] * 3
    inside = np.hypot(*(np.mgrid[:BOX, :BOX] - BOX // 2)) < BOX // 2 - 4  # corners are cut by the rotations
    assert np.all(image_correlation(averages * inside, canonical * inside) > 0.99)
    # a wrong sign of the angle or of the shift would blur the averages
    theta, shift = star_pose(stack)
    wrong, _ = class_averages(stack, labels, -theta, shift, 3, progress=False)
    assert np.all(image_correlation(wrong * inside, canonical * inside) < 0.9)


def test_streaming_does_not_change_the_averages(posed_particles):
    stack, _, labels = posed_particles
    pose = star_pose(stack)
    one_batch, _ = class_averages(stack, labels, *pose, 4, batch_size=1000, progress=False)
    small_batches, counts = class_averages(stack, labels, *pose, 4, batch_size=7, progress=False)
    np.testing.assert_allclose(one_batch, small_batches, atol=1e-5)
    assert counts[3] == 0 and not small_batches[3].any()  # an empty class averages to zeros


@pytest.mark.relion
def test_relion_applying_our_written_poses_reproduces_our_class_averages(posed_particles):
    stack, _, labels = posed_particles
    ours, _ = class_averages(stack, labels, *star_pose(stack), 3, progress=False)
    subprocess.run(["relion_stack_create", "--i", "particles.star", "--o", "aligned", "--apply_transformation"],
                   check=True, capture_output=True)
    aligned = mrcfile.read("aligned.mrcs")
    relion = np.stack([aligned[labels == k].mean(0) for k in range(3)])
    assert np.all(image_correlation(relion, ours) >= 0.95)


def test_with_their_ctfs_the_averages_are_the_particles_before_the_microscope(tmp_path, monkeypatch):
    """Particles seen through astigmatic CTFs of varied defocus: the Wiener average (each aligned image's CTF
    turned with it) recovers the canonical images; the plain average of CTF-filtered images does not."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    canonical, per_class = canonical_images(), 40
    labels = np.repeat(np.arange(3), per_class)
    theta, shift = rng.uniform(-np.pi, np.pi, labels.size), rng.integers(-2, 3, (labels.size, 2)).astype(float)
    defocus = rng.uniform(8000, 25000, labels.size)
    parameters = ctf_parameters(APIX, defocus, defocus - 1500, rng.uniform(-90, 90, labels.size), 300.0, 2.7, 0.1)
    images = np.fft.irfft2(np.fft.rfft2(transform_images(canonical[labels], theta, shift))
                           * ctf_rfft(BOX, parameters).numpy(), s=(BOX, BOX))
    encoding = {"z": rng.normal(size=(labels.size, 2)), "theta": theta, "shift": shift}
    meta = particles_table(pd.DataFrame({"rlnDefocusU": parameters[:, 0], "rlnDefocusV": parameters[:, 1],
                                         "rlnDefocusAngle": parameters[:, 2]}), encoding, labels, APIX)
    write_particles("particles.star", [images.astype(np.float32)], meta, optics_table(APIX, BOX), APIX)
    stack = Stack.open("particles.star")
    inside = np.hypot(*(np.mgrid[:BOX, :BOX] - BOX // 2)) < BOX // 2 - 4
    corrected, _ = class_averages(stack, labels, *star_pose(stack), 3, progress=False, ctf=True)
    plain, _ = class_averages(stack, labels, *star_pose(stack), 3, progress=False)
    corrected, plain = (image_correlation(a * inside, canonical * inside) for a in (corrected, plain))
    assert np.all(corrected > 0.95) and np.all(plain < 0.85) and np.all(corrected > plain + 0.15)
