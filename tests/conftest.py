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
