"""Hostile input, one case a row: every command stops with exit status 2 and one line naming the file and the
problem, writes nothing and leaves nothing behind (no output folder, no temporary file)."""

import errno
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import corpus
from emgroup.data.stack import Stack, write_particles
from emgroup.io.mrc import write_stack
from emgroup.models.spatial_vae import SpatialVAE
from emgroup.train import checkpoint

SMALL = ["--hidden", 32, "--batch-size", 25, "--no-progress"]


def files_under(folder) -> set:
    """Every file and folder below ``folder`` (hidden ones included), relative to it."""
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}


def assert_one_line(result, status, pattern):
    lines = result.output.strip().splitlines()
    assert result.exit_code == status, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert re.match(r"emgroup: error: " + pattern, lines[0]), lines[0]


def hostile_star(case: str) -> str:
    """Write the input of ``case`` into the working directory; the argument for `emgroup preprocess`."""
    def with_table(**columns):
        stack = corpus.mrc_file("in/stack.mrcs", corpus.images(6), 1.5)
        return corpus.particles(str(stack), 6, **columns)

    if case == "pixel size 0":
        return corpus.stack_and_star("in", optics_columns={"rlnImagePixelSize": 0.0})
    if case == "pixel size -3":
        return corpus.stack_and_star("in", optics_columns={"rlnImagePixelSize": -3.0})
    if case == "amplitude contrast 1.5":
        return corpus.stack_and_star("in", optics_columns={"rlnAmplitudeContrast": 1.5})
    if case in ("magnification 0", "magnification -50000", "detector pixel 0"):
        column, value = {"magnification 0": ("rlnMagnification", 0.0),
                         "magnification -50000": ("rlnMagnification", -5e4),
                         "detector pixel 0": ("rlnDetectorPixelSize", 0.0)}[case]
        table = with_table(rlnMagnification=1e4, rlnDetectorPixelSize=1.5)
        table.loc[2, column] = value
        return corpus.star_file("in/p.star", table)  # RELION 3.0: one table
    if case == "undefined optics group":
        table = with_table()
        table.loc[2, "rlnOpticsGroup"] = 2
        return corpus.star_file("in/p.star", table, corpus.optics())
    if case == "NaN defocus":
        corpus.star_file("in/p.star", with_table(), corpus.optics())
        text = Path("in/p.star").read_text().splitlines()
        row = next(i for i, line in enumerate(text) if line.startswith("000002@"))
        fields = text[row].split()
        fields[1] = "<NA>"  # rlnDefocusU, as pandas writes a missing value
        text[row] = " ".join(fields)
        Path("in/p.star").write_text("\n".join(text) + "\n")
        return "in/p.star"
    if case == "complex MRC":
        return corpus.mrc_file("in/c.mrcs", corpus.images(4).astype(np.complex64))
    if case == "3-D volume":
        return corpus.mrc_file("in/vol.mrc", np.zeros((32, 32, 32), np.float32), volume=True)
    if case == "no images":
        return corpus.mrc_file("in/empty.mrcs", np.zeros((0, 16, 16), np.float32))
    raise ValueError(case)


@pytest.mark.parametrize("case, message", [
    ("pixel size 0", r"in/particles.star: optics group 1: rlnImagePixelSize 0.0 is not a pixel size in Å"),
    ("pixel size -3", r"in/particles.star: optics group 1: rlnImagePixelSize -3.0 is not a pixel size in Å"),
    ("amplitude contrast 1.5", r"in/particles.star: optics group 1: rlnAmplitudeContrast 1.5 is not an amplitude"),
    ("magnification 0", r"in/p.star: particle 3 has rlnMagnification 0.0: the pixel size .* would not be a positive"),
    ("magnification -50000", r"in/p.star: particle 3 has rlnMagnification -50000.0"),
    ("detector pixel 0", r"in/p.star: particle 3 has rlnDetectorPixelSize 0.0"),
    ("undefined optics group", r"in/p.star: particle 3 is in optics group 2, which the optics table does not define"),
    ("NaN defocus", r"in/p.star: particle 2 has rlnDefocusU nan \(not a number\)"),
    ("complex MRC", r"in/c.mrcs: complex-valued data \(MRC mode 4\)"),
    ("3-D volume", r"in/vol.mrc: holds a 3-D map \(32\^3 voxels, MRC space group 1\), not particle images"),
    ("no images", r"in/empty.mrcs: holds no images"),
])
def test_impossible_metadata_and_images_are_refused(tmp_path, monkeypatch, run_emgroup, case, message):
    monkeypatch.chdir(tmp_path)
    argument = hostile_star(case)
    result = run_emgroup("preprocess", argument, "-o", "out/a/b", "--no-progress")
    assert_one_line(result, 2, message)
    assert not Path("out").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1"])
def test_impossible_apix_is_a_one_line_usage_error(tmp_path, monkeypatch, run_emgroup, value):
    monkeypatch.chdir(tmp_path)
    star = corpus.stack_and_star("in")
    result = run_emgroup("preprocess", star, "-o", "out", "--apix", value)
    assert_one_line(result, 2, r"Invalid value for '--apix': .* \(see emgroup preprocess --help\)")
    assert files_under(tmp_path) == {"in", "in/stack.mrcs", "in/particles.star"}


def test_click_usage_errors_are_one_line(run_emgroup):
    assert_one_line(run_emgroup("preprocess", "--no-such-option"), 2, r"No such option '--no-such-option'")
    assert_one_line(run_emgroup("analyze"), 2, r"Missing argument 'RUNDIR'")
    assert_one_line(run_emgroup("nonsense"), 2, r"No such command 'nonsense'")
    bare = run_emgroup()  # no command at all: the help, as click shows it
    assert bare.output.startswith("Usage: emgroup [OPTIONS] COMMAND") and "preprocess" in bare.output


def test_topaz_coordinates_with_nan(tmp_path, monkeypatch, run_emgroup):
    monkeypatch.chdir(tmp_path)
    corpus.mrc_file("mics/m1.mrc", corpus.images(1, 64)[0], 2.0)
    Path("coords.txt").write_text("image_name\tx_coord\ty_coord\tscore\nm1\t30\t30\t1.0\nm1\tnan\t20\t0.5\n")
    result = run_emgroup("preprocess", "--coords", "coords.txt", "--micrographs", "mics", "--box", 16, "-o", "out")
    assert_one_line(result, 2, r"coords.txt: coordinate 2 \(m1: x nan, y 20.0\) is not a number")
    assert not Path("out").exists()


def test_several_pixel_sizes_are_refused_even_with_apix(tmp_path, monkeypatch, run_emgroup):
    monkeypatch.chdir(tmp_path)
    corpus.mrc_file("in/stack.mrcs", corpus.images(4), 1.5)
    table = corpus.particles("in/stack.mrcs", 4, rlnOpticsGroup=[1, 1, 2, 2])
    corpus.star_file("in/p.star", table, corpus.optics(groups=2, rlnImagePixelSize=[1.5, 1.7]))
    for apix in ([], ["--apix", "1.6"]):
        result = run_emgroup("preprocess", "in/p.star", "-o", "out", *apix, "--no-progress")
        assert_one_line(result, 2, r"in/p.star: particles come at several pixel sizes: 1.5 Å \(optics group 1\), "
                                   r"1.7 Å \(optics group 2\); emgroup needs one")
    assert not Path("out").exists()


@pytest.fixture
def unwritable(tmp_path):
    """A folder nothing can be written to: read-only for a normal user; a read-only tmpfs for root."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)]).returncode != 0:
        pytest.skip("root, and no read-only tmpfs can be mounted")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_an_output_folder_that_cannot_be_written(tmp_path, monkeypatch, run_emgroup, unwritable):
    monkeypatch.chdir(tmp_path)
    star = corpus.stack_and_star("in")
    for output in (unwritable, unwritable / "a" / "b"):
        result = run_emgroup("preprocess", star, "-o", output, "--no-progress")
        assert_one_line(result, 2, rf"{output}: cannot write \((Permission denied|Read-only file system)\)")
    assert files_under(unwritable) == set()


class _FullDisk(io.FileIO):
    """A file whose writes fail with ENOSPC once ``room`` bytes are written."""
    room = 2000

    def write(self, data):
        if self.tell() + len(memoryview(data).cast("B")) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


@pytest.mark.parametrize("full", ["stack", "star"])
def test_a_full_disk_leaves_nothing(tmp_path, monkeypatch, run_emgroup, full):
    monkeypatch.chdir(tmp_path)
    star = corpus.stack_and_star("in", n=20)
    if full == "stack":
        monkeypatch.setattr("emgroup.io.mrc.open", lambda path, mode: _FullDisk(path, "w"), raising=False)
    else:
        def full_disk(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr("emgroup.io.star.starfile.write", full_disk)
    result = run_emgroup("preprocess", star, "-o", "out/a/b", "--no-progress")
    name = "particles.mrcs" if full == "stack" else "particles.star"
    assert_one_line(result, 2, rf"out/a/b/{name}: cannot write \(No space left on device\)")
    assert not Path("out").exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped elsewhere)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("particles", [300, 252], ids=["stack overflows", "star overflows"])
def test_a_really_full_disk_is_one_line_not_a_sigbus(tmp_path, tiny_disk, particles):
    """The stack was written through a memory map: a full disk was SIGBUS (exit 135), the temporary file left."""
    write_stack(tmp_path / "big.mrcs", corpus.images(particles, 32), 1.0)  # 1.2 MiB / 1.0 MiB + 30 kB of STAR
    done = subprocess.run([sys.executable, "-m", "emgroup", "preprocess", str(tmp_path / "big.mrcs"), "-o",
                           str(tiny_disk / "out"), "--no-progress"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(r"emgroup: error: \S+/out/particles\.(mrcs|star): cannot write \(No space left on device\)",
                        done.stderr.strip()), done.stderr
    assert files_under(tiny_disk) == set()


def test_stale_temporary_files_of_killed_runs_are_removed(tmp_path, monkeypatch, run_emgroup):
    monkeypatch.chdir(tmp_path)
    star = corpus.stack_and_star("in")
    host = re.sub(r"[^A-Za-z0-9.]", "_", os.uname().nodename)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    Path("out").mkdir()
    stale = [f".particles.{host}-{dead}-abc123.tmp.mrcs", f".particles.{host}-{dead}-x_y.tmp.star"]
    alive = [f".particles.{host}-1-keep.tmp.mrcs", f".particles.otherhost-{dead}-keep.tmp.mrcs"]
    for name in stale + alive:
        Path("out", name).write_bytes(b"half written")
    assert run_emgroup("preprocess", star, "-o", "out", "--no-progress").exit_code == 0
    assert files_under("out") == {"particles.mrcs", "particles.star", *alive}


def test_sigterm_stops_preprocess_and_leaves_nothing(tmp_path):
    write_stack(tmp_path / "big.mrcs", corpus.images(4000, 64), 1.0)
    process = subprocess.Popen([sys.executable, "-m", "emgroup", "preprocess", "big.mrcs", "-o", "out/a",
                                "--chunk-size", "8", "--no-progress"], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "out" / "a").glob(".particles.*.tmp.mrcs")) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and stderr.strip() == "emgroup: error: interrupted", stderr
    assert files_under(tmp_path) == {"big.mrcs"}


@pytest.fixture
def nan_star(tmp_path, tiny_particles):
    """A copy of the tiny particles whose particle 8 has a NaN pixel."""
    stack = Stack.open(tiny_particles)
    images = stack.images()
    images[7, 3, 4] = np.nan
    return write_particles(tmp_path / "nan" / "particles.star", [images], stack.meta, stack.optics, stack.apix)


def test_training_on_nan_pixels_names_the_particle_and_leaves_no_run(tmp_path, run_emgroup, nan_star):
    result = run_emgroup("train", nan_star, "-o", tmp_path / "runs" / "nan", "--model", "spatial", "--epochs", 2,
                         "--val-fraction", 0, *SMALL)
    assert_one_line(result, 2, r"\S*nan/particles.star: particle 8 \(\S+particles.mrcs\) has NaN or Inf pixels")
    assert not (tmp_path / "runs").exists()


def test_training_with_ctf_on_nan_defocus_is_refused_before_any_run(tmp_path, monkeypatch, run_emgroup):
    monkeypatch.chdir(tmp_path)
    star = hostile_star("NaN defocus")
    result = run_emgroup("train", star, "-o", "runs/r", "--model", "target", "--ctf", *SMALL)
    assert_one_line(result, 2, r"in/p.star: particle 2 has rlnDefocusU nan \(not a number\)")
    assert not Path("runs").exists()


@pytest.mark.slow
def test_a_diverging_loss_stops_training_and_keeps_the_good_checkpoints(tmp_path, run_emgroup, tiny_particles,
                                                                         monkeypatch):
    run = tmp_path / "run"
    loss = SpatialVAE.loss

    def nan_from_epoch_3(self, batch):
        terms = loss(self, batch)
        return {**terms, "loss": terms["loss"] * float("nan")} if self.epoch >= 2 else terms

    def remember_epoch(self, epoch):
        self.epoch = epoch

    monkeypatch.setattr(SpatialVAE, "loss", nan_from_epoch_3)
    monkeypatch.setattr(SpatialVAE, "on_epoch_start", remember_epoch)
    result = run_emgroup("train", tiny_particles, "-o", run, "--model", "spatial", "--epochs", 5, *SMALL)
    assert_one_line(result, 2, rf"{run}: the training loss of epoch 3 is nan with finite particles: training "
                               r"diverged \(try a smaller --lr, or --precision fp32\); checkpoints/last.pt keeps epoch 2")
    for name in ("best", "last"):
        state = checkpoint.load_checkpoint(run / "checkpoints" / f"{name}.pt")
        assert state["epoch"] <= 2 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert len(pd.read_csv(run / "metrics.csv")) == 2


def test_resume_with_a_broken_config(tmp_path, run_emgroup):
    run = tmp_path / "run"
    run.mkdir()
    for text, problem in [("{not json", r"not a readable run config \(not JSON"),
                          ('{"model": "spatial"}', r"not a run config \(no model_options, training, box, apix, "
                                                 r"particles entry\)")]:
        (run / "config.json").write_text(text)
        assert_one_line(run_emgroup("train", "-o", run, "--resume"), 2, rf"{run}/config.json: {problem}")


def test_sigterm_in_the_first_checkpoint_write_claims_no_epoch(tmp_path, run_emgroup, tiny_particles, monkeypatch):
    run = tmp_path / "run"
    save = checkpoint.save_checkpoint

    def interrupted(path, state):  # best.pt of epoch 1 is written, the signal comes in the write of last.pt
        if path.name == "best.pt":
            return save(path, state)
        with checkpoint.atomic_path(path) as tmp:
            tmp.write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt  # as SIGTERM does, through the handler every command installs

    monkeypatch.setattr("emgroup.train.trainer.save_checkpoint", interrupted)
    result = run_emgroup("train", tiny_particles, "-o", run, "--model", "vae", "--epochs", 3, *SMALL)
    assert result.exit_code == 130
    assert result.output.strip() == "interrupted in epoch 1, before the first checkpoint: nothing kept"
    assert not run.exists()
    assert save is checkpoint.save_checkpoint


def test_out_of_memory_continues_with_announced_micro_batches(tmp_path, run_emgroup, tiny_particles, monkeypatch):
    loss, sizes = SpatialVAE.loss, []

    def short_of_memory(self, batch):
        sizes.append(len(batch["index"]))
        if len(batch["index"]) > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return loss(self, batch)

    monkeypatch.setattr(SpatialVAE, "loss", short_of_memory)
    result = run_emgroup("train", tiny_particles, "-o", tmp_path / "run", "--model", "spatial", "--epochs", 1, *SMALL)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("out of memory")]
    assert notes == ["out of memory on cpu with 25 particles at a time (CUDA out of memory. Tried to allocate 2.00 "
                     "GiB); continuing with micro-batches of 13, gradients accumulated over each batch of 25 (the "
                     "same optimisation steps)",
                     "out of memory on cpu with 13 particles at a time (CUDA out of memory. Tried to allocate 2.00 "
                     "GiB); continuing with micro-batches of 7, gradients accumulated over each batch of 25 (the "
                     "same optimisation steps)"]
    assert sizes[:3] == [25, 13, 7] and max(sizes[3:]) == 7
    assert checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["micro_batch"] == 7
