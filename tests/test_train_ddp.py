"""`torchrun --nproc-per-node 2 -m emgroup train` (DistributedDataParallel, gloo on the CPU) trains exactly as one
process with the same global batch: each global batch is split over the ranks and the gradients averaged."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

# A deterministic configuration of the real spatial-VAE (z held at 0, no pose: nothing is sampled), so the two
# runs can agree to rounding; its unused encoder also exercises DDP's unused-parameter handling. 225 training
# particles in global batches of 30 end with a batch of 15 (ranks take 8 and 7); 25 validation particles.
OPTIONS = ["--model", "spatial", "--hidden", 32, "--freeze-z-epochs", 100, "--no-rotation", "--no-translation",
           "--batch-size", 30, "--lr", 3e-3, "--epochs", 3, "--no-progress"]


def _losses(run) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv").drop(columns=["particles_per_s", "seconds"])


@pytest.mark.slow
def test_two_gloo_processes_train_like_one(run_emgroup, tiny_particles, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "emgroup", "train", tiny_particles, "-o", tmp_path / "ddp", "--device", "cpu", *OPTIONS]
    done = subprocess.run([str(a) for a in command], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("finished 3 epochs") == 1  # rank 0 alone reports and writes

    # one process, with the stack read by a DataLoader worker process
    result = run_emgroup("train", tiny_particles, "-o", tmp_path / "one", "--num-workers", 1, *OPTIONS)
    assert result.exit_code == 0, result.output

    ddp, one = _losses(tmp_path / "ddp"), _losses(tmp_path / "one")
    assert one["train_loss"].iloc[-1] < one["train_loss"].iloc[0] - 1.0  # it did learn
    pd.testing.assert_frame_equal(ddp, one, rtol=1e-5)
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
