"""`emgroup train --resume` continues a stopped (or SIGKILLed) run exactly as if it had never stopped."""

import json
import os
import re
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from emgroup.train.checkpoint import load_checkpoint, load_run, save_checkpoint

# the full spatial-VAE (sampled z, angle and shift): the RNG state must come back for an exact resume
OPTIONS = ["--model", "spatial", "--hidden", 32, "--batch-size", 15, "--lr", 2e-3, "--no-progress"]


def _losses(run) -> pd.DataFrame:
    metrics = pd.read_csv(run / "metrics.csv")
    return metrics.drop(columns=["particles_per_s", "seconds"])


@pytest.fixture
def one_thread():
    """Torch on one thread here, as in the killed subprocess (OMP_NUM_THREADS=1): sums over another number of
    threads round differently, and the comparisons are exact."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def uninterrupted(run_emgroup, tiny_particles, tmp_path, one_thread):
    """Metrics of a 5-epoch run never stopped."""
    result = run_emgroup("train", tiny_particles, "-o", tmp_path / "whole", "--epochs", 5, *OPTIONS)
    assert result.exit_code == 0, result.output
    return _losses(tmp_path / "whole")


@pytest.mark.slow
def test_resume_gives_the_same_epochs_as_an_uninterrupted_run(run_emgroup, tiny_particles, tmp_path, uninterrupted):
    run = tmp_path / "run"
    assert run_emgroup("train", tiny_particles, "-o", run, "--epochs", 2, *OPTIONS).exit_code == 0
    assert len(pd.read_csv(run / "metrics.csv")) == 2
    result = run_emgroup("train", "-o", run, "--resume", "--epochs", 5, "--no-progress")
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(_losses(run), uninterrupted, rtol=1e-6)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 5

    # a resumed run keeps its settings: changing one is refused, naming it
    result = run_emgroup("train", "-o", run, "--resume", "--lr", 0.1)
    assert result.exit_code == 2 and "--lr 0.1 differs from the run's 0.002" in result.output


def _old_layout(config: dict) -> dict:
    """A run config as emgroup wrote it before issue 18: the model's options and the training settings in one
    ``options`` dict."""
    rest = {key: value for key, value in config.items() if key not in ("model_options", "training")}
    return {**rest, "options": {**config["model_options"], **config["training"]}}


@pytest.mark.slow
def test_a_run_written_in_the_old_config_layout_loads_and_resumes(run_emgroup, tiny_particles, tmp_path,
                                                                   uninterrupted):
    run = tmp_path / "old"
    assert run_emgroup("train", tiny_particles, "-o", run, "--epochs", 2, *OPTIONS).exit_code == 0
    new = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(_old_layout(new)))
    for name in ("best", "last"):
        state = load_checkpoint(run / "checkpoints" / f"{name}.pt")
        save_checkpoint(run / "checkpoints" / f"{name}.pt", {**state, "config": _old_layout(state["config"])})
    model, config = load_run(run, "best")  # as analyze reads it
    assert config["model_options"] == new["model_options"] and model.config.hidden == 32
    result = run_emgroup("train", "-o", run, "--resume", "--epochs", 5, "--no-progress")
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(_losses(run), uninterrupted, rtol=1e-6)
    assert json.loads((run / "config.json").read_text()) == {**new, "training": {**new["training"], "epochs": 5}}


@pytest.mark.slow
def test_a_sigkilled_run_resumes_from_its_last_checkpoint(run_emgroup, tiny_particles, tmp_path, uninterrupted):
    run = tmp_path / "killed"
    command = [sys.executable, "-m", "emgroup", "train", tiny_particles, "-o", run, "--epochs", 1000, *OPTIONS]
    process = subprocess.Popen([str(a) for a in command], env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    running = process.poll() is None
    process.kill()  # SIGKILL: no handler runs, whatever was being written stays half-written
    process.wait()
    assert running and last.exists(), process.stderr.read().decode()
    killed_at = load_checkpoint(last)["epoch"]
    assert 1 <= killed_at < 5

    stale = last.parent / f".last.{re.sub(r'[^A-Za-z0-9.]', '_', os.uname().nodename)}-{process.pid}-x.tmp.pt"
    stale.write_bytes(b"what a SIGKILL in a checkpoint write leaves")
    result = run_emgroup("train", "-o", run, "--resume", "--epochs", 5, "--no-progress")
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(_losses(run), uninterrupted, rtol=1e-6)
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]  # the killed run's temporary gone
