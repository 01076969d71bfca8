"""Stack of particle images: reads RELION's stacks exactly, resolves image paths, reads lazily, refuses bad input."""

import pickle
import re
import subprocess

import mrcfile
import numpy as np
import pandas as pd
import pytest

from emgroup.data.stack import Stack, write_particles
from emgroup.errors import InputError
from emgroup.io.mrc import write_stack, write_volume
from emgroup.io.star import format_image_name, optics_table, read_star, write_star


def random_images(n, box=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, box, box)).astype(np.float32)


@pytest.fixture
def two_stacks(tmp_path):
    """stacks/a.mrcs (6 images) and stacks/b.mrcs (4 images), and a STAR beside them naming images of both."""
    a, b = random_images(6), random_images(4, seed=1)
    write_stack(tmp_path / "stacks" / "a.mrcs", a, 2.0)
    write_stack(tmp_path / "stacks" / "b.mrcs", b, 2.0)
    meta = pd.DataFrame({"rlnImageName": np.concatenate([format_image_name([5, 0], "a.mrcs"),
                                                         format_image_name([3, 1, 2], "b.mrcs")]),
                         "rlnOpticsGroup": 1, "rlnFoo": np.arange(5)})
    write_star(tmp_path / "stacks" / "p.star", meta, optics_table(2.0, 16))
    return tmp_path / "stacks" / "p.star", np.stack([a[5], a[0], b[3], b[1], b[2]])


@pytest.mark.relion
def test_reads_a_stack_made_by_relion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    box = 24
    z, y, x = np.mgrid[:box, :box, :box] - box // 2
    write_volume("vol.mrc", np.exp(-((x - 3) ** 2 + y ** 2 / 4 + (z + 2) ** 2) / 8).astype(np.float32), 2.5)
    subprocess.run(["relion_project", "--i", "vol.mrc", "--o", "proj", "--nr_uniform", "5", "--angpix", "2.5"],
                   capture_output=True, check=True)
    stack = Stack.open("proj.star")
    with mrcfile.open("proj.mrcs") as mrc:
        expected = mrc.data.copy()
    assert (len(stack), stack.box, stack.apix) == (5, box, 2.5)
    np.testing.assert_array_equal(stack.images(), expected)
    np.testing.assert_array_equal(stack.images([4, 1]), expected[[4, 1]])
    assert stack.images().std() > 0 and "rlnAngleTilt" in stack.meta
    assert stack.optics.loc[0, "rlnAmplitudeContrast"] == 0.1  # RELION wrote none: the stated default


def test_reads_only_the_requested_images_in_order(two_stacks):
    star, expected = two_stacks
    stack = Stack.open(star)
    assert (len(stack), stack.box, stack.apix) == (5, 16, 2.0)
    np.testing.assert_array_equal(stack.images(), expected)
    np.testing.assert_array_equal(stack.images([4, 0, 2]), expected[[4, 0, 2]])
    assert stack.images([1]).dtype == np.float32
    sub = stack.subset([4, 1])
    assert sub._reader is stack._reader  # no image copied
    np.testing.assert_array_equal(sub.images(), expected[[4, 1]])
    assert sub.meta["rlnFoo"].tolist() == [4, 1]
    chunks = list(stack.iter_chunks(2))
    assert [len(i) for i, _ in chunks] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([im for _, im in chunks]), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(sub)).images(), expected[[4, 1]])


def test_image_paths_resolve_from_root_cwd_then_star_folder(two_stacks, tmp_path, monkeypatch):
    star, expected = two_stacks
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    np.testing.assert_array_equal(Stack.open(star).images(), expected)  # the STAR's folder
    (tmp_path / "root").mkdir()
    write_stack(tmp_path / "root" / "a.mrcs", random_images(6, seed=7), 2.0)
    write_stack(tmp_path / "root" / "b.mrcs", random_images(4, seed=8), 2.0)
    from_root = Stack.open(star, root=tmp_path / "root").images()
    np.testing.assert_array_equal(from_root[0], random_images(6, seed=7)[5])  # --root comes first
    monkeypatch.chdir(tmp_path / "root")
    np.testing.assert_array_equal(Stack.open(star).images()[0], random_images(6, seed=7)[5])  # then cwd


def test_a_project_relative_image_path_falls_back_to_the_file_name_in_the_star_folder(tmp_path, monkeypatch):
    # as `emgroup preprocess -o out` writes it from the project folder: rlnImageName 000001@out/particles.mrcs
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    write_stack("out/particles.mrcs", random_images(3, seed=1), 2.0)
    star = tmp_path / "out" / "particles.star"
    write_star(star, pd.DataFrame({"rlnImageName": format_image_name(np.arange(3), "out/particles.mrcs"),
                                   "rlnOpticsGroup": 1}), optics_table(2.0, 16))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # out/particles.mrcs resolves neither from here nor from out/
    np.testing.assert_array_equal(Stack.open(star).images(), random_images(3, seed=1))


def test_single_mrcs_and_apix_override(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = random_images(3)
    write_stack("s.mrcs", images, 1.1)
    stack = Stack.open("s.mrcs")
    assert stack.meta["rlnImageName"].tolist() == ["000001@s.mrcs", "000002@s.mrcs", "000003@s.mrcs"]
    assert stack.apix == pytest.approx(1.1)
    np.testing.assert_array_equal(stack.images(), images)
    assert Stack.open("s.mrcs", apix=3.0).optics.loc[0, "rlnImagePixelSize"] == 3.0


@pytest.mark.relion
def test_write_particles_is_read_by_relion_and_by_us(two_stacks, tmp_path, monkeypatch):
    star, expected = two_stacks
    monkeypatch.chdir(tmp_path)
    stack = Stack.open(star)
    out = write_particles("out/p.star", (im for _, im in stack.iter_chunks(2)), stack.meta, stack.optics, 2.0)
    back = Stack.open(out)
    np.testing.assert_array_equal(back.images(), expected)
    assert back.meta["rlnImageName"][0] == "000001@out/p.mrcs" and back.meta["rlnFoo"].tolist() == list(range(5))
    run = subprocess.run(["relion_image_handler", "--i", "out/p.star", "--stats"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    means = [float(m) for m in re.findall(r"avg= (\S+)", run.stdout)]
    np.testing.assert_allclose(means, expected.mean((1, 2)), rtol=1e-4, atol=1e-5)


def test_several_pixel_sizes_are_refused_with_the_way_out_and_an_override_keeps_shifts_in_pixels(two_stacks):
    """(The other bad inputs are checked through the CLI in test_preprocess.py.)"""
    star, expected = two_stacks
    meta, optics = read_star(star)
    meta.loc[0, "rlnOpticsGroup"] = 2
    write_star(star, meta, pd.concat([optics, optics.assign(rlnOpticsGroup=2, rlnImagePixelSize=3.0)]))
    for apix in (None, 2.5):  # one value for all would mislabel one of the groups
        with pytest.raises(InputError, match=r"several pixel sizes: 2 Å \(optics group 1\), 3 Å \(optics group "
                                             r"2\); emgroup needs one: resample .* --rescale_angpix .* --select "
                                             r"rlnOpticsGroup"):
            Stack.open(star, apix=apix)
    meta = meta.assign(rlnOpticsGroup=1, rlnOriginXAngst=4.0, rlnOriginYAngst=-2.0)
    write_star(star, meta, optics)
    stack = Stack.open(star, apix=2.5)  # the file says 2 Å/px: the shifts were 2 and -1 px
    assert stack.apix == 2.5 and (stack.optics["rlnImagePixelSize"] == 2.5).all()
    np.testing.assert_allclose(stack.meta[["rlnOriginXAngst", "rlnOriginYAngst"]], [[5.0, -2.5]] * len(meta))
    np.testing.assert_array_equal(stack.images(), expected)
    for bad in (0.0, -3.0, float("inf"), float("nan")):
        with pytest.raises(InputError, match="not a pixel size"):
            Stack.open(star, apix=bad)


def test_unknown_input_type(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(InputError, match="unknown input type"):
        Stack.open(tmp_path / "x.txt")
