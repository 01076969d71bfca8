"""Files other software writes, in the shapes met in the wild (built by tests/corpus.py), through the commands:
each is read, and what emgroup writes from it is read back by RELION (the judge of every STAR and MRC file)."""

import subprocess
from pathlib import Path

import numpy as np
import pytest

import corpus
from emgroup.ctf import ctf_parameters, ctf_rfft
from emgroup.data.ctf import stack_ctf
from emgroup.data.stack import Stack
from emgroup.io.mrc import open_stack
from emgroup.io.star import read_star


def relion_reads(star, cwd) -> str:
    """``relion_star_handler`` and ``relion_image_handler --stats`` on ``star`` (run in ``cwd``); their output."""
    done = [subprocess.run(command, cwd=cwd, capture_output=True, text=True) for command in (
        ["relion_star_handler", "--i", str(star), "--o", "relion_copy.star"],
        ["relion_image_handler", "--i", str(star), "--stats"])]
    for step in done:
        assert step.returncode == 0 and "ERROR" not in step.stdout + step.stderr, step.stdout + step.stderr
    return done[1].stdout


@pytest.mark.relion
def test_a_stack_without_the_id_string_is_preprocessed_with_one_warning(tmp_path, monkeypatch, run_emgroup):
    monkeypatch.chdir(tmp_path)
    images = corpus.images(6, 16)
    corpus.mrc_without_id("old.mrcs", images, apix=2.0)
    result = run_emgroup("preprocess", "old.mrcs", "-o", "out", "--no-progress")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "warning" in line]
    assert warnings == ["emgroup: warning: old.mrcs: no MRC ID string 'MAP ' in the header; read as 6 x 16 x 16 "
                        "float32 (the header's sizes match the file)"]
    meta, optics = read_star("out/particles.star")
    assert optics["rlnImagePixelSize"].tolist() == [2.0]
    assert open_stack("out/particles.mrcs").shape == images.shape
    assert len(relion_reads("out/particles.star", tmp_path).strip().splitlines()) >= len(images)


@pytest.mark.relion
def test_an_input_with_rlnimageoriginalname_keeps_the_whole_chain_each_label_once(tmp_path, monkeypatch,
                                                                                  run_emgroup):
    """Re-extracted or subtracted particles carry rlnImageOriginalName: it was written twice, and RELION refused
    the file ("more columns than the number of labels")."""
    monkeypatch.chdir(tmp_path)
    originals = [f"{i:06d}@Extract/job007/mic{i}.mrcs" for i in range(1, 7)]
    star = corpus.stack_and_star("in", rlnImageOriginalName=originals)
    inputs = read_star(star)[0]["rlnImageName"].tolist()
    assert run_emgroup("preprocess", star, "-o", "once", "--no-progress").exit_code == 0
    assert run_emgroup("preprocess", "once/particles.star", "-o", "twice", "--no-progress").exit_code == 0
    once, twice = read_star("once/particles.star")[0], read_star("twice/particles.star")[0]
    assert once["rlnImageOriginalName"].tolist() == inputs
    assert once["rlnEmgroupImageOriginalName2"].tolist() == originals
    assert twice["rlnImageOriginalName"].tolist() == once["rlnImageName"].tolist()
    assert twice["rlnEmgroupImageOriginalName2"].tolist() == inputs
    assert twice["rlnEmgroupImageOriginalName3"].tolist() == originals
    for output in ("once", "twice"):
        particles_block = Path(output, "particles.star").read_text().split("data_particles")[1]
        labels = [line.split()[0] for line in particles_block.splitlines() if line.startswith("_rln")]
        assert len(labels) == len(set(labels))
        relion_reads(f"{output}/particles.star", tmp_path)


@pytest.mark.relion
def test_several_optics_groups_at_one_pixel_size_keep_their_optics(tmp_path, monkeypatch, run_emgroup):
    monkeypatch.chdir(tmp_path)
    corpus.mrc_file("in/stack.mrcs", corpus.images(6), 1.5)
    table = corpus.particles("in/stack.mrcs", 6, rlnOpticsGroup=[1, 2, 1, 2, 2, 1])
    optics = corpus.optics(groups=2, rlnVoltage=[300.0, 200.0], rlnSphericalAberration=[2.7, 0.01],
                           rlnAmplitudeContrast=[0.1, 0.07])
    corpus.star_file("in/p.star", table, optics)
    assert run_emgroup("preprocess", "in/p.star", "-o", "out", "--no-progress").exit_code == 0
    meta, written = read_star("out/particles.star")
    assert meta["rlnOpticsGroup"].tolist() == [1, 2, 1, 2, 2, 1]
    assert written[["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]].values.tolist() == [
        [300.0, 2.7, 0.1], [200.0, 0.01, 0.07]]
    stack = Stack.open("out/particles.star")
    defocus = meta.loc[1, ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]]
    expected = ctf_rfft(16, ctf_parameters(1.5, *defocus, 200.0, 0.01, 0.07)).numpy()
    np.testing.assert_allclose(stack_ctf(stack, [1]), expected, atol=1e-6)  # particle 2: group 2's optics
    relion_reads("out/particles.star", tmp_path)


@pytest.mark.slow
@pytest.mark.relion
def test_a_cryosparc_refinement_comes_back_whole_from_analyze(tmp_path, monkeypatch, run_emgroup):
    """A .cs with cryoSPARC's full field set and 3-D poses: particles.cs keeps every field and uid, particles.star
    keeps the 3-D pose in rlnEmgroupInput* columns beside emgroup's in-plane one, and RELION reads it."""
    monkeypatch.chdir(tmp_path)
    corpus.mrc_file("project/J1/stack.mrcs", corpus.images(40, 16), 2.0)
    records = corpus.cryosparc_particles("project/J9_particles.cs", "J1/stack.mrcs", 40, 16, 2.0, alignments="3D")
    for command in (["train", "project/J9_particles.cs", "-o", "run", "--model", "spatial", "--epochs", 1,
                     "--hidden", 16, "--batch-size", 20, "--no-progress"],
                    ["analyze", "run", "-o", "out", "--clusters", 2, "--no-denoise", "--no-progress"]):
        result = run_emgroup(*command)
        assert result.exit_code == 0, result.output
    out = np.load("out/particles.cs", allow_pickle=False)
    for name in records.dtype.names:
        np.testing.assert_array_equal(out[name], records[name], err_msg=name)
    assert {"alignments2D/pose", "alignments2D/shift", "alignments2D/class"} <= set(out.dtype.names)
    particles, _ = read_star("out/particles.star")
    source = Stack.open("project/J9_particles.cs").meta
    assert "rlnAngleRot" not in particles and "rlnAngleTilt" not in particles
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_allclose(particles[f"rlnEmgroupInput{label[3:]}"], source[label], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["alignments2D/class"] + 1, particles["rlnClassNumber"])
    relion_reads("out/particles.star", tmp_path)
