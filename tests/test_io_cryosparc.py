"""cryoSPARC .cs: plain numpy structured arrays; what we write is read back exactly by numpy, poses follow RELION's
matrices, a .cs input's records (every field, the uid) come back, and `emgroup preprocess` accepts a .cs file."""

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

import corpus
from emgroup.data.poses import euler_to_matrix
from emgroup.data.stack import Stack
from emgroup.errors import InputError
from emgroup.io.cryosparc import read_cs, write_cs
from emgroup.io.mrc import write_stack
from emgroup.io.star import format_image_name, optics_table, read_star


@pytest.fixture
def particles():
    rng = np.random.default_rng(0)
    n = 6
    return pd.DataFrame({
        "rlnImageName": format_image_name(np.arange(n), "J1/stack.mrcs"),
        "rlnDefocusU": rng.uniform(1e4, 2e4, n), "rlnDefocusV": rng.uniform(1e4, 2e4, n),
        "rlnDefocusAngle": rng.uniform(-90, 90, n), "rlnPhaseShift": rng.uniform(0, 90, n),
        "rlnAngleRot": rng.uniform(-180, 180, n), "rlnAngleTilt": rng.uniform(5, 175, n),
        "rlnAnglePsi": rng.uniform(-180, 180, n), "rlnOriginXAngst": rng.normal(0, 3, n),
        "rlnOriginYAngst": rng.normal(0, 3, n), "rlnClassNumber": rng.integers(1, 4, n), "rlnOpticsGroup": 1})


def test_numpy_reads_back_exactly_what_we_wrote(tmp_path, particles):
    write_cs(tmp_path / "p.cs", particles, optics_table(1.25, 64, voltage=200.0, cs=2.0, amplitude_contrast=0.07))
    records = np.load(tmp_path / "p.cs", allow_pickle=False)  # no pickled objects: strings are fixed-width bytes
    assert records["blob/path"].tolist() == [b"J1/stack.mrcs"] * 6
    np.testing.assert_array_equal(records["blob/idx"], np.arange(6))
    np.testing.assert_array_equal(records["blob/shape"], [[64, 64]] * 6)
    assert records["blob/idx"].dtype == np.uint32 and records["blob/psize_A"].dtype == np.float32
    assert records["uid"].dtype == np.uint64 and len(set(records["uid"])) == 6
    np.testing.assert_array_equal(records["blob/psize_A"], np.float32(1.25))
    np.testing.assert_array_equal(records["ctf/accel_kv"], np.float32(200.0))
    np.testing.assert_array_equal(records["ctf/amp_contrast"], np.float32(0.07))
    np.testing.assert_array_equal(records["ctf/df1_A"], particles["rlnDefocusU"].astype(np.float32))
    np.testing.assert_array_equal(records["ctf/df_angle_rad"],
                                  np.deg2rad(particles["rlnDefocusAngle"]).astype(np.float32))
    np.testing.assert_array_equal(records["alignments3D/class"], particles["rlnClassNumber"] - 1)
    np.testing.assert_array_equal(records["alignments3D/shift"],
                                  (particles[["rlnOriginXAngst", "rlnOriginYAngst"]] / 1.25).astype(np.float32))
    # cryoSPARC's pose is a rotation vector whose matrix is the transpose of RELION's A(rot, tilt, psi)
    relion = euler_to_matrix(particles["rlnAngleRot"], particles["rlnAngleTilt"], particles["rlnAnglePsi"])
    np.testing.assert_allclose(Rotation.from_rotvec(records["alignments3D/pose"]).as_matrix(),
                               relion.transpose(0, 2, 1), atol=1e-6)
    write_cs(tmp_path / "again.cs", particles, optics_table(1.25, 64))
    np.testing.assert_array_equal(np.load(tmp_path / "again.cs")["uid"], records["uid"])  # uids: hashes, repeatable


def test_round_trip_through_cs_keeps_the_relion_values(tmp_path, particles):
    write_cs(tmp_path / "p.cs", particles, optics_table(1.25, 64))
    back, optics, _ = read_cs(tmp_path / "p.cs")
    assert optics.loc[0, ["rlnImageSize", "rlnVoltage"]].tolist() == [64, 300.0]
    assert optics.loc[0, "rlnImagePixelSize"] == pytest.approx(1.25)
    euler = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    pd.testing.assert_frame_equal(back[particles.columns].drop(columns=euler), particles.drop(columns=euler),
                                  check_dtype=False, rtol=1e-6)
    np.testing.assert_allclose(euler_to_matrix(*back[euler].to_numpy().T),
                               euler_to_matrix(*particles[euler].to_numpy().T), atol=1e-6)


def test_two_dimensional_alignments(tmp_path, particles):
    table = particles.drop(columns=["rlnAngleRot", "rlnAngleTilt"])
    write_cs(tmp_path / "p.cs", table, optics_table(1.25, 64))
    records = np.load(tmp_path / "p.cs")
    assert "alignments3D/pose" not in records.dtype.names
    np.testing.assert_array_equal(records["alignments2D/pose"], np.deg2rad(table["rlnAnglePsi"]).astype(np.float32))
    np.testing.assert_allclose(read_cs(tmp_path / "p.cs")[0]["rlnAnglePsi"], table["rlnAnglePsi"], atol=1e-4)


def test_a_cs_input_comes_back_with_every_field_and_uid(tmp_path):
    """What emgroup infers replaces alignments2D pose, shift, class and psize_A; every other field is the input's."""
    records = corpus.cryosparc_particles(tmp_path / "in.cs", "J2/stack.mrcs", 5, 32, 1.3, alignments="3D")
    particles, optics, read = read_cs(tmp_path / "in.cs")
    np.testing.assert_array_equal(read, records)
    ours = particles.drop(columns=["rlnAngleRot", "rlnAngleTilt"]).assign(
        rlnAnglePsi=[10.0, 20, 30, 40, 50], rlnOriginXAngst=1.3, rlnOriginYAngst=-2.6, rlnClassNumber=[1, 2, 2, 1, 3])
    write_cs(tmp_path / "out.cs", ours, optics, records)
    out = np.load(tmp_path / "out.cs", allow_pickle=False)
    assert out.dtype.names[:len(records.dtype.names)] == records.dtype.names
    for name in records.dtype.names:
        np.testing.assert_array_equal(out[name], records[name], err_msg=name)  # uid, ctf/*, alignments3D/*, ...
    np.testing.assert_allclose(out["alignments2D/pose"], np.deg2rad([10, 20, 30, 40, 50]), rtol=1e-6)
    np.testing.assert_allclose(out["alignments2D/shift"], [[1.0, -2.0]] * 5, rtol=1e-6)
    np.testing.assert_array_equal(out["alignments2D/class"], [0, 1, 1, 0, 2])
    np.testing.assert_allclose(out["alignments2D/psize_A"], 1.3, rtol=1e-6)


def test_preprocess_reads_a_cs_file_with_project_relative_paths(tmp_path, monkeypatch, run_emgroup):
    monkeypatch.chdir(tmp_path)
    images = np.random.default_rng(1).normal(size=(6, 32, 32)).astype(np.float32)
    write_stack("project/J1/stack.mrcs", images, 1.25)
    records = corpus.cryosparc_particles("project/J2_particles.cs", "J1/stack.mrcs", 6, 32, 1.25)
    records["blob/idx"] = np.arange(6)[::-1]
    with open("project/J2_particles.cs", "wb") as file:
        np.save(file, records)
    stack = Stack.open("project/J2_particles.cs")  # resolved from the .cs file's folder
    np.testing.assert_array_equal(stack.images(), images[::-1])
    np.testing.assert_array_equal(stack.subset([4, 1]).records, records[[4, 1]])
    result = run_emgroup("preprocess", "project/J2_particles.cs", "-o", "out", "--no-progress")
    assert result.exit_code == 0, result.output
    meta, _ = read_star("out/particles.star")
    assert meta["rlnImageOriginalName"][0] == "000006@project/J1/stack.mrcs"
    np.testing.assert_allclose(meta["rlnDefocusU"], records["ctf/df1_A"], rtol=1e-6)


def test_bad_cs_files(tmp_path):
    (tmp_path / "bad.cs").write_bytes(b"not numpy" * 100)
    with pytest.raises(InputError, match="bad.cs: not a readable cryoSPARC .cs file"):
        read_cs(tmp_path / "bad.cs")
    with open(tmp_path / "ctf.cs", "wb") as file:
        np.save(file, np.zeros(2, dtype=[("ctf/df1_A", "f4")]))
    with pytest.raises(InputError, match="no blob/path and blob/idx fields"):
        read_cs(tmp_path / "ctf.cs")
    with open(tmp_path / "pickled.cs", "wb") as file:  # object fields are pickles: code, not data
        np.save(file, np.array([(b"a.mrcs", 0)], dtype=[("blob/path", "O"), ("blob/idx", "u4")]), allow_pickle=True)
    with pytest.raises(InputError, match="pickled.cs: not a readable cryoSPARC .cs file"):
        read_cs(tmp_path / "pickled.cs")
    (tmp_path / "stream.cs").write_bytes(b"\x95CSDAT" + bytes(100))
    with pytest.raises(InputError, match="stream.cs: cryosparc-tools' compressed .cs stream format"):
        read_cs(tmp_path / "stream.cs")
    records = corpus.cryosparc_particles(tmp_path / "nan.cs", "s.mrcs", 3, 16, 1.0)
    records["ctf/df2_A"][1] = np.nan
    with open(tmp_path / "nan.cs", "wb") as file:
        np.save(file, records)
    with pytest.raises(InputError, match=r"nan.cs: particle 2 has rlnDefocusV nan"):
        read_cs(tmp_path / "nan.cs")
