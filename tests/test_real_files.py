"""Files other software writes, in the shapes met in the wild (built by tests/corpus.py), through the commands:
each is read, and what emgroup writes from it is read back by RELION (the judge of every STAR and MRC file)."""

import subprocess

import numpy as np
import pytest

import corpus
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
