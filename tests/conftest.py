"""Shared fixtures: the shared real data, RELION availability, and a CLI runner."""

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if shutil.which("relion_project") is None:
        skip = pytest.mark.skip(reason="RELION 3.1 not installed (apt-get install -y relion)")
        for item in items:
            if "relion" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository (MNIST digits, adenylate kinase models and trajectory)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED_DATA


@pytest.fixture
def run_emgroup():
    """Run the `emgroup` CLI in-process: ``run_emgroup("preprocess", "in.star", "-o", out)`` -> click Result."""
    from emgroup.cli.main import cli

    def run(*args):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture(scope="session")
def blob_volume():
    """An asymmetric (D=40, 2 Å/px) volume of Gaussian blobs, z-y-x, centred at D // 2: (volume, apix)."""
    import numpy as np

    box, apix = 40, 2.0
    z, y, x = np.meshgrid(*(np.arange(box) - box // 2,) * 3, indexing="ij")
    volume = np.zeros((box,) * 3, np.float32)
    for (cx, cy, cz), weight in [((0, 0, 0), 1.0), ((8, 0, 0), 0.7), ((0, 5, 0), 0.5), ((0, 0, 4), 0.8),
                                 ((3, -6, 2), 0.6)]:
        volume += weight * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / 8.0)
    return volume, apix


@pytest.fixture
def relion_project(tmp_path):
    """Project with the real ``relion_project``: ``relion_project(volume, apix, table, *options) -> (N, D, D)``.

    ``table`` maps RELION particle labels (rlnAngleRot/Tilt/Psi, rlnOriginXAngst/YAngst, rlnDefocusU/V/Angle...)
    to per-projection lists; one optics group at 300 kV, Cs 2.7 mm, amplitude contrast 0.1. ``options`` are passed
    on (e.g. ``"--ctf"``).
    """
    import subprocess

    import mrcfile
    import pandas as pd
    import starfile

    def project(volume, apix, table, *options):
        folder = tmp_path / f"relion{len(list(tmp_path.glob('relion*')))}"
        folder.mkdir()
        with mrcfile.new(folder / "volume.mrc") as mrc:
            mrc.set_data(volume.astype("float32"))
            mrc.voxel_size = apix
        optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                               "rlnImagePixelSize": [apix], "rlnImageSize": [volume.shape[-1]],
                               "rlnImageDimensionality": [2], "rlnVoltage": [300.0],
                               "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
        particles = pd.DataFrame(table).assign(rlnOpticsGroup=1)
        starfile.write({"optics": optics, "particles": particles}, folder / "angles.star")
        subprocess.run(["relion_project", "--i", "volume.mrc", "--o", "projections", "--ang", "angles.star",
                        "--angpix", str(apix), *options], cwd=folder, check=True, capture_output=True)
        return mrcfile.read(folder / "projections.mrcs").reshape(len(particles), *volume.shape[1:])

    return project


@pytest.fixture(scope="session")
def tiny_particles(tmp_path_factory) -> Path:
    """STAR of 250 simulated adenylate-kinase particles (16 px, 7 Å/px, uniform in-plane rotation, CTF, SNR 10),
    preprocessed (normalized, 25 marked 'val' in rlnEmgroupSplit): made once per session by the CLI."""
    from emgroup.cli.main import cli

    folder = tmp_path_factory.mktemp("tiny_particles")
    for args in (["simulate", "-o", folder / "sim", "-n", 250, "--box", 16, "--apix", 7, "--views", "inplane",
                  "--rotation", "uniform", "--snr", 10, "--seed", 0, "--no-progress"],
                 ["preprocess", folder / "sim" / "particles.star", "-o", folder / "prep", "--no-progress"]):
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return folder / "prep" / "particles.star"
