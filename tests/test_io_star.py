"""STAR I/O: RELION 3.1 written and read back by RELION itself, RELION 3.0 read as RELION converts it, image names."""

import subprocess

import numpy as np
import pandas as pd
import pytest

from emgroup.errors import InputError
from emgroup.io.star import (OPTICS_COLUMNS, format_image_name, optics_table, parse_image_name, read_star,
                             write_star)

RELION30 = """
data_{block}

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnVoltage #3
_rlnDetectorPixelSize #4
_rlnMagnification #5
_rlnOriginX #6
_rlnOriginY #7
_rlnSphericalAberration #8
_rlnAmplitudeContrast #9
000001@proj.mrcs 10000 300 5.0 20000 1.5 -2.0 2.7 0.1
000002@proj.mrcs 12000 300 5.0 20000 0.5 3.0 2.7 0.1
000003@proj.mrcs 13000 200 5.0 20000 0.0 0.0 2.0 0.07
"""


def particles(n=5):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"rlnImageName": format_image_name(np.arange(n), "stacks/a.mrcs"),
                         "rlnDefocusU": rng.uniform(1e4, 3e4, n), "rlnAnglePsi": rng.uniform(-180, 180, n),
                         "rlnOpticsGroup": 1, "rlnEmgroupLatent1": rng.normal(size=n)})


def test_image_names_round_trip_vectorised():
    assert format_image_name(0, "a/b.mrcs") == "000001@a/b.mrcs"
    index, paths = parse_image_name(format_image_name(np.array([0, 9, 123456]), np.array(["x", "y", "z@w.mrcs"])))
    np.testing.assert_array_equal(index, [0, 9, 123456])
    np.testing.assert_array_equal(paths, ["x", "y", "z@w.mrcs"])
    assert parse_image_name("image.mrc") == (0, "image.mrc")
    for bad in ("x@a.mrcs", "0@a.mrcs"):
        with pytest.raises(ValueError):
            parse_image_name(bad)


def test_write_read_round_trip_keeps_unknown_columns(tmp_path):
    table = particles()
    write_star(tmp_path / "p.star", table, optics_table(1.3, 64).drop(columns=["rlnAmplitudeContrast"]))
    back, optics = read_star(tmp_path / "p.star")
    pd.testing.assert_frame_equal(back, table, check_exact=False, rtol=1e-8)
    assert list(optics.columns[:len(OPTICS_COLUMNS)]) == OPTICS_COLUMNS
    assert optics.loc[0, "rlnAmplitudeContrast"] == 0.1  # default filled
    assert [p.name for p in tmp_path.iterdir()] == ["p.star"]


@pytest.mark.relion
def test_relion_reads_what_we_write(tmp_path):
    table = particles()
    write_star(tmp_path / "p.star", table, optics_table(1.3, 64))
    run = subprocess.run(["relion_star_handler", "--i", "p.star", "--o", "r.star"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    back, optics = read_star(tmp_path / "r.star")  # RELION rewrote it: every value survived
    pd.testing.assert_frame_equal(back[table.columns], table, check_exact=False, rtol=1e-5)
    assert optics.loc[0, ["rlnImagePixelSize", "rlnImageSize", "rlnVoltage"]].tolist() == [1.3, 64, 300]


@pytest.mark.relion
@pytest.mark.parametrize("block", ["", "images"])
def test_relion30_is_read_as_relion_converts_it(tmp_path, block):
    (tmp_path / "old.star").write_text(RELION30.format(block=block))
    ours, our_optics = read_star(tmp_path / "old.star")
    subprocess.run(["relion_convert_star", "--i", "old.star", "--o", "new.star"], cwd=tmp_path,
                   capture_output=True, check=True)
    relions, relion_optics = read_star(tmp_path / "new.star")
    pd.testing.assert_frame_equal(ours[relions.columns], relions, check_dtype=False)
    shared = [c for c in relion_optics if c not in ("rlnImageSize", "rlnOpticsGroupName")]
    pd.testing.assert_frame_equal(our_optics[shared], relion_optics[shared], check_dtype=False)


def test_unreadable_star_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_star(tmp_path / "missing.star")
    (tmp_path / "bad.star").write_text("this is not\na star file\n")
    with pytest.raises(InputError, match="bad.star"):
        read_star(tmp_path / "bad.star")


def test_a_label_is_never_written_twice(tmp_path):
    table = pd.concat([particles(), particles()[["rlnDefocusU"]]], axis=1)
    with pytest.raises(ValueError, match=r"labels twice: \['rlnDefocusU'\]"):
        write_star(tmp_path / "p.star", table, optics_table(1.3, 64))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("problem, message", [
    ("pixel size", r"optics group 1: rlnImagePixelSize -1(\.0)? is not a pixel size in Å"),
    ("voltage", r"optics group 1: rlnVoltage 0(\.0)? is not a voltage in kV"),
    ("group", r"particle 2 is in optics group 7, which the optics table does not define \(it has 1\)"),
    ("angle", r"particle 4 has rlnAnglePsi inf \(not a number\)"),
])
def test_impossible_values_are_refused_when_read(tmp_path, problem, message):
    table, optics = particles(), optics_table(1.3, 64)
    if problem == "pixel size":
        optics["rlnImagePixelSize"] = -1.0
    elif problem == "voltage":
        optics["rlnVoltage"] = 0.0
    elif problem == "group":
        table.loc[1, "rlnOpticsGroup"] = 7
    else:
        table.loc[3, "rlnAnglePsi"] = np.inf
    write_star(tmp_path / "p.star", table, optics)
    with pytest.raises(InputError, match=message):
        read_star(tmp_path / "p.star")
