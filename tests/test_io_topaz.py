"""Topaz coordinates: boxes cut at the right pixels (x = column, y = row), edge boxes dropped and counted."""

import mrcfile
import numpy as np
import pandas as pd
import pytest

from emgroup.data.stack import Stack
from emgroup.errors import InputError
from emgroup.io.star import read_star
from emgroup.io.topaz import read_topaz

BOX = 16


@pytest.fixture
def topaz(tmp_path, monkeypatch):
    """Two 80 x 100 (rows x columns) micrographs and a table of 5 coordinates, 2 of whose boxes cross an edge."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    micrographs = {name: rng.normal(size=(80, 100)).astype(np.float32) for name in ("m1", "m2")}
    (tmp_path / "mics").mkdir()
    for name, image in micrographs.items():
        with mrcfile.new(f"mics/{name}.mrc") as mrc:  # a 2-D micrograph, as motion correction writes it
            mrc.set_data(image)
            mrc.voxel_size = 1.3
    table = pd.DataFrame({"image_name": ["m1", "m1", "m2", "m2", "m1"], "x_coord": [20, 93, 50, 8.4, 60],
                          "y_coord": [30, 40, 71.6, 50, 8], "score": [1.5, 0.2, -0.3, 2.0, 0.7]})
    table.to_csv("particles.txt", sep="\t", index=False)
    return micrographs, table


def test_boxes_are_cut_around_the_coordinates(topaz):
    micrographs, table = topaz
    stack = Stack.from_topaz("particles.txt", "mics", BOX)
    kept = [0, 2, 3, 4]  # (93, 40) in m1 crosses the right edge (columns 85..100); the others touch edges
    cases = [("m1", 20, 30), ("m2", 50, 72), ("m2", 8, 50), ("m1", 60, 8)]  # 8.4 -> 8, 71.6 -> 72
    expected = np.stack([micrographs[m][y - BOX // 2:y + BOX // 2, x - BOX // 2:x + BOX // 2] for m, x, y in cases])
    assert (len(stack), stack.box, stack.apix, stack.edge_skipped) == (4, BOX, pytest.approx(1.3), 1)
    np.testing.assert_array_equal(stack.images(), expected)
    np.testing.assert_array_equal(stack.images([3, 0]), expected[[3, 0]])
    np.testing.assert_allclose(stack.meta["rlnCoordinateX"], table["x_coord"][kept])
    np.testing.assert_allclose(stack.meta["rlnAutopickFigureOfMerit"], table["score"][kept])
    assert stack.meta["rlnMicrographName"].tolist() == ["mics/m1.mrc", "mics/m2.mrc", "mics/m2.mrc", "mics/m1.mrc"]


def test_preprocess_from_topaz_reports_the_skipped_boxes(topaz, run_emgroup):
    micrographs, _ = topaz
    result = run_emgroup("preprocess", "--coords", "particles.txt", "--micrographs", "mics", "--box", BOX,
                         "--no-normalize", "--no-progress", "-o", "out")
    assert result.exit_code == 0, result.output
    assert "1 skipped for crossing a micrograph edge" in result.output
    meta, optics = read_star("out/particles.star")
    assert len(meta) == 4 and "rlnCoordinateX" in meta and optics.loc[0, "rlnImagePixelSize"] == pytest.approx(1.3)
    np.testing.assert_array_equal(mrcfile.read("out/particles.mrcs")[0], micrographs["m1"][22:38, 12:28])


def test_bad_topaz_input(topaz, tmp_path):
    (tmp_path / "bad.txt").write_text("name\tx\ty\nm1\t1\t2\n")
    with pytest.raises(InputError, match="no image_name, x_coord, y_coord column"):
        read_topaz(tmp_path / "bad.txt")
    (tmp_path / "nan.txt").write_text("image_name\tx_coord\ty_coord\nm1\tleft\t2\n")
    with pytest.raises(InputError, match="non-numeric"):
        read_topaz(tmp_path / "nan.txt")
    assert read_topaz(tmp_path / "particles.txt")["score"].tolist() == [1.5, 0.2, -0.3, 2.0, 0.7]
    (tmp_path / "unscored.txt").write_text("image_name\tx_coord\ty_coord\nm1\t40\t40\n")  # no score: no column
    assert "rlnAutopickFigureOfMerit" not in Stack.from_topaz(tmp_path / "unscored.txt", "mics", BOX).meta
    (tmp_path / "far.txt").write_text("image_name\tx_coord\ty_coord\nm1\t0\t0\n")
    with pytest.raises(InputError, match="every box of 16 px crosses a micrograph edge"):
        Stack.from_topaz(tmp_path / "far.txt", "mics", BOX)
    (tmp_path / "gone.txt").write_text("image_name\tx_coord\ty_coord\nm9\t40\t40\n")
    with pytest.raises(InputError, match="m9.mrc: no such file"):
        Stack.from_topaz(tmp_path / "gone.txt", "mics", BOX)
