"""MRC/MRCS I/O: exact round trips, header pixel size and statistics, errors, and RELION reading what we write."""

import re
import subprocess

import mrcfile
import numpy as np
import pytest

import corpus
from emgroup.errors import InputError, InputWarning
from emgroup.io.mrc import StackWriter, open_stack, read_volume, read_voxel_size, write_stack, write_volume


@pytest.fixture
def images():
    return np.random.default_rng(0).normal(3.0, 2.0, size=(7, 12, 12)).astype(np.float32)


def test_stack_round_trip_is_memory_mapped_with_pixel_size_and_statistics(tmp_path, images):
    path = tmp_path / "a.mrcs"
    write_stack(path, images, apix=1.75)
    data = open_stack(path)
    assert isinstance(data, np.memmap) and not data.flags.writeable
    np.testing.assert_array_equal(data, images)
    assert read_voxel_size(path) == pytest.approx(1.75)
    with mrcfile.open(path) as mrc:
        assert mrc.is_image_stack()
        header = mrc.header
        np.testing.assert_allclose([header.dmin, header.dmax, header.dmean, header.rms],
                                   [images.min(), images.max(), images.mean(), images.std()], rtol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["a.mrcs"]  # no temporary file left


def test_streamed_chunks_equal_one_write(tmp_path, images):
    with StackWriter(tmp_path / "s.mrcs", len(images), 12, apix=2.0) as out:
        for start in range(0, len(images), 3):
            out.write(images[start:start + 3])
    np.testing.assert_array_equal(open_stack(tmp_path / "s.mrcs"), images)


def test_failed_or_short_write_leaves_nothing(tmp_path, images):
    with pytest.raises(RuntimeError), StackWriter(tmp_path / "a.mrcs", len(images), 12, 1.0) as out:
        out.write(images[:2])
        raise RuntimeError("interrupted")
    with pytest.raises(ValueError, match="3 of 7"), StackWriter(tmp_path / "b.mrcs", len(images), 12, 1.0) as out:
        out.write(images[:3])
    assert list(tmp_path.iterdir()) == []


def test_single_image_and_volume(tmp_path, images):
    with mrcfile.new(tmp_path / "one.mrc") as mrc:
        mrc.set_data(images[0])
    assert open_stack(tmp_path / "one.mrc").shape == (1, 12, 12)
    assert read_voxel_size(tmp_path / "one.mrc") is None  # header says 0
    vol = np.random.default_rng(1).random((8, 8, 8)).astype(np.float32)
    write_volume(tmp_path / "v.mrc", vol, apix=3.0)
    back, apix = read_volume(tmp_path / "v.mrc")
    np.testing.assert_array_equal(back, vol)
    assert apix == pytest.approx(3.0)


@pytest.mark.parametrize("damage", ["missing", "truncated", "not_mrc"])
def test_bad_files_raise_input_error_naming_the_file(tmp_path, images, damage):
    path = tmp_path / "a.mrcs"
    write_stack(path, images, 1.0)
    if damage == "missing":
        path = tmp_path / "nope.mrcs"
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-200])
    else:
        path.write_bytes(b"not an image" * 200)
    with pytest.raises(InputError, match=re.escape(str(path))):
        open_stack(path)


@pytest.mark.relion
def test_relion_reads_our_stack(tmp_path, images):
    write_stack(tmp_path / "a.mrcs", images, apix=1.5)
    out = subprocess.run(["relion_image_handler", "--i", "a.mrcs", "--stats"], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    rows = re.findall(r"avg= (\S+) stddev= (\S+) minval= (\S+) maxval= (\S+); angpix = (\S+)", out)
    assert len(rows) == len(images)
    stats = np.array(rows, dtype=float)
    expected = np.stack([images.mean((1, 2)), images.std((1, 2)), images.min((1, 2)), images.max((1, 2))], 1)
    np.testing.assert_allclose(stats[:, :4], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats[:, 4], 1.5)


def test_a_stack_without_the_id_string_is_read_with_one_warning(tmp_path, images):
    path = corpus.mrc_without_id(tmp_path / "old.mrcs", images, apix=1.5)
    with pytest.warns(InputWarning, match=re.escape(f"{path}: no MRC ID string")) as caught:
        data = open_stack(path)
    np.testing.assert_array_equal(data, images)
    assert len(caught) == 1
    with pytest.warns(InputWarning):
        assert read_voxel_size(path) == pytest.approx(1.5)


@pytest.mark.parametrize("change", [b"", bytes(48)], ids=["truncated", "longer"])
def test_a_header_without_the_id_string_whose_sizes_do_not_match_is_refused(tmp_path, images, change):
    path = corpus.mrc_without_id(tmp_path / "bad.mrcs", images)
    raw = path.read_bytes()
    path.write_bytes(raw[:-100] if not change else raw + change)
    with pytest.raises(InputError, match="sizes do not match the file"):
        open_stack(path)


def test_complex_values_zero_images_and_3d_maps_are_not_particle_images(tmp_path, images):
    complex_path = corpus.mrc_file(tmp_path / "c.mrcs", images.astype(np.complex64))
    with pytest.raises(InputError, match=r"complex-valued data \(MRC mode 4\)"):
        open_stack(complex_path)
    empty = corpus.mrc_file(tmp_path / "empty.mrcs", np.zeros((0, 12, 12), np.float32))
    with pytest.raises(InputError, match="holds no images"):
        open_stack(empty)
    cube = np.zeros((12, 12, 12), np.float32)
    with pytest.raises(InputError, match="holds a 3-D map"):
        open_stack(corpus.mrc_file(tmp_path / "map.mrc", cube, volume=True))
    assert open_stack(corpus.mrc_file(tmp_path / "stack.mrcs", cube)).shape == (12, 12, 12)  # space group 0
    assert read_volume(tmp_path / "map.mrc")[0].shape == (12, 12, 12)


@pytest.mark.relion
def test_relion_reads_a_stack_without_the_id_string_as_we_do(tmp_path, images):
    corpus.mrc_without_id(tmp_path / "old.mrcs", images)
    out = subprocess.run(["relion_image_handler", "--i", "old.mrcs", "--stats"], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    means = np.array(re.findall(r"avg= (\S+)", out), dtype=float)
    np.testing.assert_allclose(means, images.mean((1, 2)), rtol=1e-4, atol=1e-5)
