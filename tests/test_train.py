"""`emgroup train`: a short run learns and writes its run folder; inputs are checked; data are streamed in batches."""

import dataclasses
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from emgroup.ctf import ctf_rfft
from emgroup.data.ctf import stack_ctf, stack_ctf_parameters
from emgroup.data.preprocess import SPLIT_COLUMN
from emgroup.data.stack import Stack
from emgroup.devices import cpu_memory_cap
from emgroup.errors import InputError
from emgroup.io.star import read_star, write_star
from emgroup.models.registry import build_model
from emgroup.models.spatial_vae import SpatialVAE
from emgroup.models.vae import VAE
from emgroup.train.checkpoint import TrainSettings, load_checkpoint, load_run, save_checkpoint
from emgroup.train.data import EpochBatches, StackBatches, split_indices
from emgroup.train import trainer as trainer_module
from emgroup.train.trainer import new_run

SMALL = ["--hidden", 32, "--batch-size", 25, "--no-progress"]


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_writes_the_run(run_emgroup, tiny_particles, tmp_path):
    run = tmp_path / "run"
    result = run_emgroup("train", tiny_particles, "-o", run, "--model", "spatial", "--epochs", 5, "--lr", 3e-3,
                         *SMALL)
    assert result.exit_code == 0, result.output

    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3, 4, 5]
    assert {"train_loss", "val_loss", "lr", "particles_per_s", "seconds"} <= set(metrics.columns)
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0] - 1.0
    assert metrics["val_loss"].iloc[-1] < metrics["val_loss"].iloc[0] - 1.0
    # the 225 training particles (25 are marked 'val') over the training pass, a part of the epoch's seconds
    assert (metrics["particles_per_s"] * metrics["seconds"] >= 225 * (1 - 1e-9)).all()

    config = json.loads((run / "config.json").read_text())
    assert (config["model"], config["box"], config["apix"]) == ("spatial", 16, 7.0)
    assert config["particles"] == str(tiny_particles.resolve())
    defaults = dataclasses.asdict(SpatialVAE.Config())
    # the particles carry defocus: the CTF is modelled without being asked
    assert config["model_options"] == {**defaults, "ctf": True, "hidden": 32}
    assert config["training"] == {"epochs": 5, "epoch_size": None, "batch_size": 25, "lr": 3e-3, "seed": 0,
                                  "device": "auto", "num_workers": 0, "precision": "fp32", "val_fraction": None,
                                  "plateau_patience": 10, "early_stop": 20}
    assert config["version"]

    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == metrics["epoch"][metrics["val_loss"].idxmin()]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 5
    model, loaded = load_run(run, "best")
    assert isinstance(model, SpatialVAE) and not model.training and loaded == best["config"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, best["model"][name])
    stack = Stack.open(tiny_particles)
    with pytest.raises(ValueError, match="CTF"):
        model.encode(torch.from_numpy(stack.images([0, 1, 2])))
    latent = model.encode(torch.from_numpy(stack.images([0, 1, 2])),
                          torch.from_numpy(stack_ctf_parameters(stack, [0, 1, 2])))
    assert latent["z"].shape == (3, 2) and latent["theta"].shape == (3,)


@pytest.mark.slow
def test_a_3d_model_trains_on_volumes(run_emgroup, tmp_path):
    result = run_emgroup("simulate", "-o", tmp_path / "sim", "--volumes", "-n", 40, "--box", 16, "--apix", 7,
                         "--seed", 0, "--no-progress")
    assert result.exit_code == 0, result.output
    result = run_emgroup("train", tmp_path / "sim" / "volumes.star", "-o", tmp_path / "run", "--model", "masked",
                         "--group", "SO3", "--width", 8, "--latent-channels", 4, "--epochs", 2, "--batch-size", 8,
                         "--no-progress")
    assert result.exit_code == 0, result.output
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert len(metrics) == 2 and metrics["train_loss"].iloc[1] < metrics["train_loss"].iloc[0]
    model, config = load_run(tmp_path / "run")
    assert (model.ndim, config["box"], config["model_options"]["group"]) == (3, 16, "SO3")


@pytest.mark.slow
def test_bf16_autocast_on_the_cpu_trains_like_fp32(run_emgroup, tiny_particles, tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = tmp_path / precision
        result = run_emgroup("train", tiny_particles, "-o", runs[precision], "--model", "target", "--group", "P4",
                             "--channels", 8, "--fourier-features", 64, "--epochs", 3, "--precision", precision,
                             "--device", "cpu", *SMALL)
        assert result.exit_code == 0, result.output
    fp32, bf16 = (pd.read_csv(runs[p] / "metrics.csv")["train_loss"] for p in ("fp32", "bf16"))
    assert bf16.iloc[-1] < bf16.iloc[0]
    assert np.allclose(bf16, fp32, rtol=0.02)  # same run up to bf16 rounding of the products ...
    assert not np.array_equal(bf16, fp32)  # ... which did happen: autocast was on
    model, _ = load_run(runs["bf16"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: fp32 weights


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_trains_in_bf16_only_where_the_cpu_computes_it_natively(run_emgroup, tiny_particles, tmp_path,
                                                                              monkeypatch, native):
    monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda: native)
    result = run_emgroup("train", tiny_particles, "-o", tmp_path / "run", "--model", "vae", "--epochs", 1,
                         "--precision", "auto", "--device", "cpu", *SMALL)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["training"]["precision"] == ("bf16" if native else "fp32")


def _losses(run):
    metrics = pd.read_csv(run / "metrics.csv")
    return metrics[[c for c in metrics.columns if c.endswith("loss") or c == "lr"]]


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics(run_emgroup, tiny_particles, tmp_path):
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        result = run_emgroup("train", tiny_particles, "-o", tmp_path / name, "--model", "vae", "--epochs", 2,
                             "--seed", seed, *SMALL)
        assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(_losses(tmp_path / "a"), _losses(tmp_path / "b"))
    assert not np.allclose(_losses(tmp_path / "a"), _losses(tmp_path / "c"))


@pytest.mark.slow
def test_plateau_halves_the_rate_and_early_stopping_ends_the_run(run_emgroup, tiny_particles, tmp_path):
    # frozen z and no pose: a deterministic loss; at lr 1e-6 it never improves (by 1e-4 relative) after epoch 1
    result = run_emgroup("train", tiny_particles, "-o", tmp_path / "run", "--model", "spatial", "--lr", 1e-6,
                         "--freeze-z-epochs", 100, "--no-rotation", "--no-translation", "--epochs", 20,
                         "--plateau-patience", 1, "--early-stop", 3, *SMALL)
    assert result.exit_code == 0, result.output
    assert "stopped early" in result.output
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    # epoch 1 improves; epochs 2 and 3 do not (> patience 1: halve); after epoch 4, 3 epochs without improvement
    np.testing.assert_allclose(metrics["lr"], [1e-6, 1e-6, 1e-6, 5e-7])


@pytest.mark.slow
def test_a_run_folder_is_refused_unless_resume_or_force(run_emgroup, tiny_particles, tmp_path):
    run = tmp_path / "run"
    assert run_emgroup("train", tiny_particles, "-o", run, "--model", "vae", "--epochs", 1, *SMALL).exit_code == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    result = run_emgroup("train", tiny_particles, "-o", run, "--model", "vae", "--epochs", 1, *SMALL)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"emgroup: error: {run}: holds another run; pass --resume to continue it or --force to replace it"]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    result = run_emgroup("train", tiny_particles, "-o", run, "--model", "vae", "--epochs", 1, "--z-dim", 3,
                         "--force", *SMALL)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["model_options"]["z_dim"] == 3


def _volumes_star(particles, folder):
    """A copy of ``particles`` whose optics table says the images are 3-D."""
    meta, optics = read_star(particles)
    write_star(folder / "volumes.star", meta, optics.assign(rlnImageDimensionality=3))
    return folder / "volumes.star"


@pytest.mark.parametrize("case", ["foreign option", "bad model option", "missing file", "3-D data",
                                  "3-D model", "bad device", "masked group", "target group"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(run_emgroup, tiny_particles, tmp_path, case):
    args = {"foreign option": [tiny_particles, "--model", "spatial", "--beta", 4],
            "bad model option": [tiny_particles, "--model", "spatial", "--theta-prior", "cauchy"],
            "missing file": [tmp_path / "none.star", "--model", "vae"],
            "3-D data": [_volumes_star(tiny_particles, tmp_path), "--model", "vae"],
            "3-D model": [tiny_particles, "--model", "masked", "--group", "SO3"],
            "bad device": [tiny_particles, "--model", "vae", "--device", "tpu"],
            "masked group": [tiny_particles, "--model", "masked", "--group", "P8"],
            "target group": [tiny_particles, "--model", "target", "--group", "SO3"]}[case]
    expected = {"foreign option": "--beta: not an option of --model spatial", "bad model option": "cauchy",
                "missing file": "none.star: no such file", "3-D data": "holds 3-D volumes",
                "3-D model": "voxels); this model trains on 3-D volumes",
                "bad device": "--device tpu",
                "masked group": "--group P8 is not a choice of --model masked: SO2, SO3 (see",
                "target group": "--group SO3 is not a choice of --model target: P4, P8, P16 (see"}[case]
    result = run_emgroup("train", *args, "-o", tmp_path / "run")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emgroup: error:") and expected in lines[0]
    assert not (tmp_path / "run").exists()


def test_help_lists_every_model_option_with_units_and_defaults(run_emgroup):
    result = run_emgroup("train", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for flag in ["--z-dim", "--hidden", "--beta", "--no-rotation", "--no-translation", "--theta-prior",
                 "--shift-sigma", "--likelihood", "--augment-rotation", "--freeze-z-epochs", "--model [vae|spatial",
                 "--epochs", "--batch-size", "--lr", "--seed", "--device", "--num-workers", "--precision",
                 "--val-fraction", "--plateau-patience", "--early-stop", "--resume", "--force", "--root"]:
        assert flag in text
    assert "pixels per axis. [default: 2.0 (spatial), 2.5 (target)]" in text  # --shift-sigma, per model
    assert "[default: 1.0 (vae)]" in text  # --beta
    assert "SIGMA in degrees" in text
    # --group means one thing per model: the help gives both, and each model's default
    assert "--group [P4|P8|P16|SO2|SO3] --model target: Rotation group of the" in text
    assert "encoder: P4, P8 or P16 (r rotations by multiples of 360/r degrees). --model masked: Group acting" in text
    assert "[default: P8 (target), SO2 (masked)]" in text


def test_split_comes_from_the_preprocess_column_unless_a_fraction_is_given(tiny_particles):
    stack = Stack.open(tiny_particles)
    train, val = split_indices(stack, None, seed=0)
    np.testing.assert_array_equal(val, np.flatnonzero(stack.meta[SPLIT_COLUMN] == "val"))
    assert len(val) == 25 and len(train) == 225
    train, val = split_indices(stack, 0.2, seed=5)
    assert len(val) == 50 and sorted(np.concatenate([train, val])) == list(range(250))
    with pytest.raises(InputError, match="no particle left for training"):
        split_indices(stack.subset(val[:1]), None, seed=0)


def test_batches_of_ranks_make_up_the_single_process_batch():
    indices = np.arange(100, 123)  # 23 particles, global batches of 5: the last one has 3
    single = EpochBatches(indices, 5, seed=3)
    ranks = [EpochBatches(indices, 5, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for sampler in [single, *ranks]:
        sampler.set_epoch(4)
    whole = list(single)
    assert sorted(np.concatenate(whole)) == list(indices) and [len(b) for b in whole] == [5, 5, 5, 5, 3]
    for batch, share0, share1 in zip(whole, *map(list, ranks), strict=True):
        assert sorted(share0 + share1) == sorted(batch) and len(share0) - len(share1) in (0, 1)
    assert list(single) == whole  # same epoch, same order
    single.set_epoch(5)
    assert list(single) != whole
    assert EpochBatches(np.arange(21), 5, seed=0, world_size=2).global_sizes() == [5, 5, 5, 5]  # a lone 1 dropped


def test_an_epoch_size_takes_a_new_seeded_subset_each_epoch():
    sampler = EpochBatches(np.arange(100, 200), 8, seed=1, epoch_size=20)
    subsets = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert [len(batch) for batch in batches] == [8, 8, 4]
        subsets.append(sorted(np.concatenate(batches)))
        assert len(set(subsets[-1])) == 20 and set(subsets[-1]) <= set(range(100, 200))
    assert subsets[0] != subsets[1] and subsets[0] == subsets[2]
    assert len(EpochBatches(np.arange(10), 4, seed=0, epoch_size=50)) == 3  # never more than the particles


def test_batches_hold_the_requested_particles_and_their_ctf(tiny_particles):
    stack = Stack.open(tiny_particles)
    batch = StackBatches(stack, with_ctf=True)[[7, 2, 200]]
    np.testing.assert_array_equal(batch["images"].numpy(), stack.images([7, 2, 200]))
    assert batch["index"].tolist() == [7, 2, 200] and batch["ctf_parameters"].shape == (3, 9)
    np.testing.assert_array_equal(ctf_rfft(stack.box, batch["ctf_parameters"]).numpy(), stack_ctf(stack, [7, 2, 200]))


@pytest.mark.slow
def test_sigterm_stops_cleanly_keeping_the_last_complete_epoch(run_emgroup, tiny_particles, tmp_path, monkeypatch):
    def terminate_at_epoch_3(self, epoch):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(SpatialVAE, "on_epoch_start", terminate_at_epoch_3)
    run = tmp_path / "run"
    result = run_emgroup("train", tiny_particles, "-o", run, "--model", "spatial", "--epochs", 10, *SMALL)
    assert result.exit_code == 130
    assert "interrupted" in result.output and "holds epoch 2" in result.output
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    assert len(pd.read_csv(run / "metrics.csv")) == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_load_run_without_the_checkpoint_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such checkpoint"):
        load_run(tmp_path, "last")


def test_a_run_config_builds_its_model_and_an_unknown_option_is_named(tmp_path):
    """config.json's model options are the model's Config fields; any other key is an error."""
    model = build_model("vae", {"z_dim": 2}, 8)
    for extra in ({}, {"z_dimm": 3}):
        config = {"model": "vae", "model_options": {**dataclasses.asdict(model.config), **extra},
                  "training": dataclasses.asdict(TrainSettings()), "box": 8}
        save_checkpoint(tmp_path / "checkpoints" / "best.pt", {"model": model.state_dict(), "config": config})
        if not extra:
            assert load_run(tmp_path)[0].config == model.config
    with pytest.raises(InputError, match="best.pt: .*VAE has no option 'z_dimm'"):
        load_run(tmp_path)
    with pytest.raises(ValueError, match="VAE has no option 'epochs'"):
        build_model("vae", {"z_dim": 2, "epochs": 5}, 8)


def test_micro_batches_take_the_same_optimisation_step(tiny_particles, tmp_path, monkeypatch):
    """The gradient accumulated over micro-batches (what a run gets after running out of memory) is the whole
    batch's gradient: the model's loss here draws no noise, so the two must agree to rounding."""
    def mean_squared_error(self, batch):
        images = batch["images"]
        error = ((self.decode(self.encode(images, batch["ctf_parameters"])) - images) ** 2).flatten(1).mean(1).mean()
        return {"loss": error, "recon": error}

    monkeypatch.setattr(VAE, "loss", mean_squared_error)
    results = []
    for micro_batch in (None, 3):
        trainer = new_run(tiny_particles, tmp_path / f"run{micro_batch}", "vae", {"hidden": 16},
                          TrainSettings(batch_size=10, device="cpu"), progress=False)
        trainer.micro_batch = micro_batch
        batch = next(iter(trainer.train_loader))
        terms = trainer._step(batch, train=True, weight=1 / 10)
        results.append((terms, [p.grad for p in trainer.model.parameters() if p.grad is not None]))
    (whole, whole_grads), (micro, micro_grads) = results
    assert whole["loss"].item() == pytest.approx(micro["loss"].item(), rel=1e-6)
    for g_whole, g_micro in zip(whole_grads, micro_grads, strict=True):
        torch.testing.assert_close(g_micro, g_whole, rtol=1e-5, atol=1e-7)
    assert any(g.abs().max() > 0 for g in whole_grads)


needs_proc = pytest.mark.skipif(not os.path.isfile("/proc/self/status"), reason="the memory cap needs Linux's /proc")


@needs_proc
def test_an_allocation_beyond_the_memory_cap_fails_as_torch_out_of_memory_and_the_cap_is_lifted_after():
    import resource

    before = resource.getrlimit(resource.RLIMIT_DATA)
    with cpu_memory_cap(0.25) as cap:
        assert cap is not None
        torch.ones(2**24)  # 64 MiB: within the cap
        with pytest.raises(RuntimeError) as failure:
            torch.ones(2**28)  # 1 GiB: beyond it
        assert trainer_module._out_of_memory(failure.value)
    assert resource.getrlimit(resource.RLIMIT_DATA) == before
    torch.ones(2**28)


@needs_proc
def test_a_batch_beyond_the_memory_limit_trains_in_announced_micro_batches(tiny_particles, tmp_path):
    """What the kernel's OOM killer would end on a machine with too little memory finishes in micro-batches: one
    batch of 225 particles with 64 poses searched needs more than 0.1 GiB beyond the model and data. A fresh
    process: one whose heap already holds freed memory reuses it within the cap."""
    result = subprocess.run([sys.executable, "-m", "emgroup", "train", str(tiny_particles), "-o", str(tmp_path / "run"),
                             "--model", "spatial", "--hidden", "500", "--batch-size", "225", "--epochs", "1",
                             "--device", "cpu", "--memory-limit", "0.1", "--no-progress"],
                            capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "out of memory on cpu with 225 particles at a time" in output
    assert "continuing with micro-batches of" in output
    assert len(pd.read_csv(tmp_path / "run" / "metrics.csv")) == 1
