"""Preprocessing: Fourier cropping against an analytic band-limited image, RELION's normalization, the streamed
`emgroup preprocess` command (read back by RELION, bounded memory) and its refusal of every kind of bad input."""

import re
import subprocess
import tracemalloc
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from emgroup.data.preprocess import SPLIT_COLUMN, fourier_crop, fourier_pad, normalize, preprocess_stack
from emgroup.data.stack import Stack
from emgroup.io.mrc import write_stack
from emgroup.io.star import format_image_name, optics_table, read_star, write_star


def cosines(box, waves):
    """Sum of cosines ``a cos(2 pi (kx (x - c) + ky (y - c)) / box + phase)`` about the centre c = box // 2."""
    y, x = np.mgrid[:box, :box] - box // 2
    return sum(a * np.cos(2 * np.pi * (kx * x + ky * y) / box + phase) for a, kx, ky, phase in waves)


@pytest.mark.parametrize("box, new_box", [(64, 32), (63, 24), (64, 33), (40, 40)])
def test_fourier_crop_resamples_a_band_limited_image_exactly(box, new_box):
    waves = [(1.5, 0, 0, 0.0), (1.0, 3, -2, 0.4), (0.7, -5, 7, 1.3), (0.4, 11, 2, -2.0)]  # |k| < new_box / 2
    images = np.stack([cosines(box, waves), cosines(box, waves[::-1][:2])]).astype(np.float32)
    expected = np.stack([cosines(new_box, waves), cosines(new_box, waves[::-1][:2])])
    cropped = fourier_crop(images, new_box)
    assert cropped.shape == (2, new_box, new_box) and cropped.dtype == np.float32
    np.testing.assert_allclose(cropped, expected, atol=2e-5)


def test_fourier_crop_keeps_the_centre_pixel_and_the_mean():
    box = 64
    y, x = np.mgrid[:box, :box] - box // 2
    blob = np.exp(-(x**2 + y**2) / 30.0)[None].astype(np.float32) + 0.25
    for new_box in (32, 31):
        small = fourier_crop(blob, new_box)[0]
        assert np.unravel_index(small.argmax(), small.shape) == (new_box // 2, new_box // 2)
        assert small.mean() == pytest.approx(blob.mean(), rel=1e-5)


@pytest.mark.parametrize("box, new_box", [(32, 64), (24, 63), (33, 64), (40, 80)])
def test_fourier_pad_resamples_a_band_limited_image_exactly_and_crop_undoes_it(box, new_box):
    waves = [(1.5, 0, 0, 0.0), (1.0, 3, -2, 0.4), (0.7, -5, 7, 1.3), (0.4, 10, 2, -2.0)]  # |k| < box / 2
    images = cosines(box, waves)[None].astype(np.float32)
    padded = fourier_pad(images, new_box)
    assert padded.shape == (1, new_box, new_box) and padded.dtype == np.float32
    np.testing.assert_allclose(padded[0], cosines(new_box, waves), atol=2e-5)
    np.testing.assert_allclose(fourier_crop(padded, box), images, atol=2e-5)


def test_normalize_sets_background_to_mean_0_std_1_and_ignores_affine_changes():
    rng = np.random.default_rng(0)
    images = rng.normal(2, 3, (3, 32, 32)).astype(np.float32)
    images[:, 8:24, 8:24] += 10
    out = normalize(images)
    y, x = np.mgrid[:32, :32] - 16
    background = out[:, x**2 + y**2 > 16**2]
    np.testing.assert_allclose(background.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(background.std(1), 1, atol=1e-5)
    np.testing.assert_allclose(normalize(images * 5 - 7), out, atol=1e-4)


@pytest.mark.relion
def test_normalize_equals_relion_preprocess_norm(tmp_path):
    images = np.random.default_rng(1).normal(2, 3, (4, 32, 32)).astype(np.float32)
    images[:, 10:20, 12:22] += 5
    write_stack(tmp_path / "n.mrcs", images, 1.0)
    subprocess.run(["relion_preprocess", "--operate_on", "n.mrcs", "--operate_out", "r.mrcs", "--norm", "--no_ramp",
                    "--bg_radius", "16"], cwd=tmp_path, capture_output=True, check=True)
    np.testing.assert_allclose(normalize(images), mrcfile.read(tmp_path / "r.mrcs"), atol=1e-5)


@pytest.fixture
def star_input(tmp_path, monkeypatch):
    """In tmp_path (the working directory): in/stack.mrcs (10 noisy 32 px images) and in/p.star with CTF columns."""
    monkeypatch.chdir(tmp_path)
    images = np.random.default_rng(2).normal(0, 1, (10, 32, 32)).astype(np.float32)
    write_stack("in/stack.mrcs", images, 1.5)
    meta = pd.DataFrame({"rlnImageName": format_image_name(np.arange(10), "stack.mrcs"),
                         "rlnDefocusU": np.linspace(1e4, 2e4, 10), "rlnDefocusV": np.linspace(1e4, 2e4, 10) + 300,
                         "rlnDefocusAngle": 30.0, "rlnOpticsGroup": 1, "rlnMyLabel": np.arange(10)})
    write_star("in/p.star", meta, optics_table(1.5, 32, voltage=200.0))
    return images


@pytest.mark.relion
def test_preprocess_writes_what_relion_reads(star_input, run_emgroup):
    result = run_emgroup("preprocess", "in/p.star", "-o", "out", "--downsample", "16", "--invert",
                         "--val-fraction", "0.3", "--seed", "4", "--chunk-size", "3")
    assert result.exit_code == 0, result.output
    meta, optics = read_star("out/particles.star")
    assert meta["rlnImageOriginalName"].tolist() == format_image_name(np.arange(10), "in/stack.mrcs").tolist()
    assert meta["rlnImageName"][0] == "000001@out/particles.mrcs"
    assert (meta[SPLIT_COLUMN] == "val").sum() == 3
    np.testing.assert_array_equal(meta["rlnMyLabel"], np.arange(10))
    np.testing.assert_allclose(meta["rlnDefocusU"], np.linspace(1e4, 2e4, 10))  # CTF columns unchanged
    assert optics.loc[0, ["rlnImagePixelSize", "rlnImageSize", "rlnVoltage"]].tolist() == [3.0, 16, 200.0]
    expected = normalize(-fourier_crop(star_input, 16))
    np.testing.assert_allclose(mrcfile.read("out/particles.mrcs"), expected, atol=1e-5)
    run = subprocess.run(["relion_image_handler", "--i", "out/particles.star", "--stats"], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    stats = np.array(re.findall(r"avg= (\S+) .*angpix = (\S+)", run.stdout), dtype=float)
    np.testing.assert_allclose(stats[:, 0], expected.mean((1, 2)), atol=1e-4)
    np.testing.assert_allclose(stats[:, 1], 3.0)
    again = run_emgroup("preprocess", "in/p.star", "-o", "out2", "--downsample", "16", "--invert",
                        "--val-fraction", "0.3", "--seed", "4")
    assert again.exit_code == 0
    assert read_star("out2/particles.star")[0][SPLIT_COLUMN].tolist() == meta[SPLIT_COLUMN].tolist()  # seeded


def test_single_stack_input_and_max_particles(star_input, run_emgroup):
    result = run_emgroup("preprocess", "in/stack.mrcs", "-o", "out", "--no-normalize", "--max-particles", "4",
                         "--apix", "2.0", "--no-progress")
    assert result.exit_code == 0, result.output
    meta, optics = read_star("out/particles.star")
    assert len(meta) == 4 and optics.loc[0, "rlnImagePixelSize"] == 2.0
    np.testing.assert_array_equal(mrcfile.read("out/particles.mrcs"), star_input[:4])


def peak_traced_bytes(stack, out, chunk):
    tracemalloc.start()
    preprocess_stack(stack, out, downsample=32, chunk_size=chunk, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_does_not_grow_with_the_stack(tmp_path):
    box, chunk, n = 64, 64, 2048  # the stack is 32 chunks (32 MiB)
    rng = np.random.default_rng(3)
    with mrcfile.new_mmap(tmp_path / "big.mrcs", shape=(n, box, box), mrc_mode=2) as mrc:
        for start in range(0, n, 512):
            mrc.data[start:start + 512] = rng.normal(size=(512, box, box))
        mrc.voxel_size = 1.0
    stack = Stack.open(tmp_path / "big.mrcs")
    small = peak_traced_bytes(stack.subset(slice(0, n // 8)), tmp_path / "small" / "p.star", chunk)
    large = peak_traced_bytes(stack, tmp_path / "large" / "p.star", chunk)
    stack_bytes = n * box * box * 4
    assert large < stack_bytes / 4, f"peak {large / 2**20:.1f} MiB for a {stack_bytes / 2**20:.0f} MiB stack"
    assert large < small * 1.25 + 2**20  # 8 x the particles, about the same peak
    assert len(Stack.open(tmp_path / "large" / "p.star")) == n


def write_bad_input(problem):
    """Damage the star_input fixture's files so that `problem` occurs; return the INPUT argument."""
    meta, optics = read_star("in/p.star")
    if problem == "missing file":
        return "in/nothing.star"
    if problem == "truncated mrc":
        data = open("in/stack.mrcs", "rb").read()
        open("in/stack.mrcs", "wb").write(data[:-1000])
        return "in/stack.mrcs"
    if problem == "not an mrc":
        open("in/junk.mrcs", "wb").write(b"\x00junk" * 500)
        return "in/junk.mrcs"
    if problem == "no rlnImageName":
        meta = meta.drop(columns="rlnImageName")
    elif problem == "missing stack":
        meta.loc[3, "rlnImageName"] = "000004@gone.mrcs"
    elif problem == "index past end":
        meta.loc[3, "rlnImageName"] = "000011@in/stack.mrcs"
    elif problem in ("mixed box sizes", "non-square"):
        with mrcfile.new("in/other.mrcs") as mrc:
            mrc.set_data(np.zeros((2, 24, 24 if problem == "mixed box sizes" else 20), np.float32))
        meta.loc[3, "rlnImageName"] = "000001@in/other.mrcs"
    elif problem in ("nan pixels", "inf pixels"):
        with mrcfile.open("in/stack.mrcs", "r+") as mrc:
            mrc.data[7, 3, 4] = np.nan if problem == "nan pixels" else np.inf
    elif problem == "empty selection":
        meta = meta.iloc[:0]
    elif problem == "constant background":
        with mrcfile.open("in/stack.mrcs", "r+") as mrc:
            mrc.data[5] = 0.0
    write_star("in/p.star", meta, optics)
    return "in/p.star"


@pytest.mark.parametrize("problem, message", [
    ("missing file", "in/nothing.star: no such file"),
    ("truncated mrc", r"stack.mrcs: truncated MRC file \(shorter than its header says\)"),
    ("not an mrc", "junk.mrcs: not a readable MRC file"),
    ("no rlnImageName", "p.star: no rlnImageName column"),
    ("missing stack", "p.star: image stack gone.mrcs not found"),
    ("index past end", r"p.star: image 11@in/stack.mrcs is past the end of the stack \(10 images\)"),
    ("mixed box sizes", r"p.star: mixed box sizes \[24, 32\]"),
    ("non-square", "other.mrcs: images are not square"),
    ("nan pixels", r"p.star: particle 8 \(000008@in/stack.mrcs\) has NaN or Inf pixels"),
    ("inf pixels", r"p.star: particle 8 \(000008@in/stack.mrcs\) has NaN or Inf pixels"),
    ("empty selection", "p.star: no particles"),
    ("constant background", r"p.star: particle 6 \(000006@in/stack.mrcs\) has a constant background"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(star_input, run_emgroup, problem, message):
    argument = write_bad_input(problem)
    result = run_emgroup("preprocess", argument, "-o", "out", "--chunk-size", "4", "--no-progress")
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert re.match(r"emgroup: error: \S*" + message, result.output.strip()), result.output
    assert not Path("out").exists()


def test_downsample_larger_than_the_box_is_refused(star_input, run_emgroup):
    result = run_emgroup("preprocess", "in/p.star", "-o", "out", "--downsample", "40", "--no-progress")
    assert result.exit_code == 2 and "cannot downsample 32 px particles to 40 px" in result.output
    assert not Path("out").exists()
