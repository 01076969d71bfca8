"""Stack over volumes: reads what `emgroup simulate --volumes` writes, folders of MRC files and NIfTI volumes."""

import os
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from emgroup.data.stack import Stack
from emgroup.errors import InputError
from emgroup.io.mrc import write_volume
from emgroup.io.star import optics_table, write_star

ADK_OPEN = Path(__file__).resolve().parents[1] / "emgroup" / "demo_data" / "adk_open.pdb"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """Four 16^3 adenylate-kinase volumes (closed/open) in random orientations, written by the CLI."""
    from click.testing import CliRunner

    from emgroup.cli.main import cli

    folder = tmp_path_factory.mktemp("sim")
    cwd = os.getcwd()
    os.chdir(folder.parent)  # simulate writes image paths relative to its working directory
    try:
        result = CliRunner().invoke(cli, ["simulate", "-o", folder.name, "--volumes", "-n", "4", "--box", "16",
                                          "--apix", "7", "--conformations", "2", "--no-progress", "--pdb2",
                                          str(ADK_OPEN)], catch_exceptions=False)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return folder


def test_reads_what_simulate_writes(simulated, monkeypatch):
    monkeypatch.chdir(simulated.parent)
    stack = Stack.open(simulated / "volumes.star", ndim=3)
    assert (len(stack), stack.box, stack.apix) == (4, 16, 7.0)
    assert int(stack.optics["rlnImageDimensionality"].iloc[0]) == 3
    volumes = stack.images([2, 0])
    assert volumes.shape == (2, 16, 16, 16) and volumes.dtype == np.float32
    for k, row in zip([2, 0], volumes):
        assert np.array_equal(row, mrcfile.read(simulated / "volumes" / f"{k + 1:06d}.mrc"))
    assert {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"} <= set(stack.meta)
    assert set(stack.meta["rlnEmgroupTrueConformation"]) <= {0.0, 1.0}
    part = stack.subset([3, 1])
    assert np.array_equal(part.images(), stack.images([3, 1]))
    assert part.meta["rlnImageName"].tolist() == stack.meta["rlnImageName"].iloc[[3, 1]].tolist()
    chunks = list(stack.iter_chunks(3))
    assert [len(i) for i, _ in chunks] == [3, 1] and np.array_equal(chunks[1][1], stack.images([3]))
    # the STAR's own folder is also searched (another working directory)
    monkeypatch.chdir(simulated / "volumes")
    with pytest.raises(InputError, match="not found"):
        Stack.open(simulated / "volumes.star", ndim=3)
    assert len(Stack.open(simulated / "volumes.star", ndim=3, root=simulated.parent)) == 4


def test_folder_of_mrc_files_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    vols = rng.normal(size=(3, 8, 8, 8)).astype(np.float32)
    for k, vol in enumerate(vols):
        write_volume(tmp_path / "vols" / f"v{k}.mrc", vol, 2.5)
    stack = Stack.open(tmp_path / "vols", ndim=3)
    assert (len(stack), stack.box, stack.apix) == (3, 8, 2.5)
    assert np.array_equal(stack.images(), vols)
    assert np.array_equal(Stack.open(tmp_path / "vols" / "v1.mrc", ndim=3).images()[0], vols[1])
    # a volumes STAR moved with its files: found by their bare names in the STAR's folder, as particle stacks are
    write_star(tmp_path / "vols" / "moved.star", pd.DataFrame({"rlnImageName": ["gone/v2.mrc", "gone/v0.mrc"]}),
               optics_table(2.5, 8))
    assert np.array_equal(Stack.open(tmp_path / "vols" / "moved.star", ndim=3).images(), vols[[2, 0]])
    write_volume(tmp_path / "vols" / "v3.mrc", np.zeros((10, 10, 10), np.float32), 2.5)
    with pytest.raises(InputError, match="mixed box sizes"):
        Stack.open(tmp_path / "vols", ndim=3)
    write_volume(tmp_path / "flat.mrc", np.zeros((8, 8, 6), np.float32), 2.5)
    with pytest.raises(InputError, match="not a cubic volume"):
        Stack.open(tmp_path / "flat.mrc", ndim=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no volume files"):
        Stack.open(tmp_path / "empty", ndim=3)


def test_nifti_volumes_are_transposed_to_zyx(tmp_path, monkeypatch):
    nibabel = pytest.importorskip("nibabel")
    rng = np.random.default_rng(1)
    ijk = rng.normal(size=(6, 6, 6, 2)).astype(np.float32)  # two volumes along the 4th axis
    image = nibabel.Nifti1Image(ijk, np.diag([1.5, 1.5, 1.5, 1.0]))
    nibabel.save(image, tmp_path / "scan.nii.gz")
    stack = Stack.open(tmp_path / "scan.nii.gz", ndim=3)
    assert (len(stack), stack.box, stack.apix) == (2, 6, 1.5)
    volumes = stack.images()
    assert np.array_equal(volumes[1][3, 2, 1], ijk[1, 2, 3, 1])  # (z, y, x) = (k, j, i)
    assert np.array_equal(volumes, ijk.transpose(3, 2, 1, 0))
    assert stack.meta["rlnImageName"].iloc[1].startswith("000002@")
    monkeypatch.setitem(sys.modules, "nibabel", None)  # as if the optional extra were not installed
    with pytest.raises(InputError, match="needs the optional package nibabel"):
        Stack.open(tmp_path / "scan.nii.gz", ndim=3)
