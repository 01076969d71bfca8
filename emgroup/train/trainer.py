"""The training loop shared by every model; it only calls the interface of :mod:`emgroup.models.base`.

Adam, ``ReduceLROnPlateau`` (x0.5 after ``plateau_patience`` epochs without improvement of the monitored loss:
the validation loss, or the training loss when there is no validation set), early stopping after ``early_stop``
such epochs, autocast (``bf16`` on CUDA and the CPU, ``fp16`` with gradient scaling on CUDA), and
DistributedDataParallel under ``torchrun`` (each global batch split over the processes; see
:mod:`emgroup.train.data`). Every epoch ends with an atomic ``checkpoints/last.pt`` holding everything needed to
continue bit for bit (model, optimizer, scheduler, RNG states of every process, epoch, early-stopping state,
metrics so far).
"""

import dataclasses
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from emgroup import __version__
from emgroup.data.ctf import DEFOCUS_LABELS, has_ctf
from emgroup.data.stack import Stack, require_finite
from emgroup.devices import resolve_device
from emgroup.errors import InputError
from emgroup.io.atomic import atomic_path
from emgroup.models.registry import MODELS, model_class
from emgroup.signals import sigterm_interrupts
from emgroup.train import distributed
from emgroup.train.checkpoint import (CHECKPOINTS, CONFIG, METRICS, TrainSettings, checkpoint_path, load_checkpoint,
                                      read_config, rng_state, save_checkpoint, set_rng_state, write_config)
from emgroup.train.data import batch_loader, split_indices

#: --precision -> autocast dtype (None: no autocast); fp16 applies on CUDA only
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: settings a resumed run may change; the others must stay as the run's config.json has them
RESUME_MAY_CHANGE = ("epochs", "device", "num_workers")
#: relative decrease of the monitored loss that counts as an improvement (best.pt, early stopping; the LR
#: schedule uses ReduceLROnPlateau's own default, also 1e-4 relative)
MIN_IMPROVEMENT = 1e-4


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def holds_run(rundir) -> bool:
    """Whether ``rundir`` already holds an emgroup run (a config or checkpoints)."""
    return (Path(rundir) / CONFIG).exists() or (Path(rundir) / CHECKPOINTS).exists()


class Trainer:
    """Fits one model to one stack, writing the run folder (rank 0 only). Build with :func:`new_run` or
    :func:`resume_run`, then call :meth:`fit`."""

    def __init__(self, config: dict, settings: TrainSettings, stack, rundir, progress: bool = True):
        self.config, self.stack = config, stack
        self.rundir, self.progress = Path(rundir), progress
        self.processes = distributed.from_environment()
        self.device = resolve_device(settings.device, self.processes.local_rank, self.processes.world_size)
        if settings.precision == "auto":
            settings = dataclasses.replace(settings, precision=native_precision(self.device))
        self.settings = settings
        train_idx, val_idx = split_indices(stack, settings.val_fraction, settings.seed)
        world = self.processes.world_size
        if settings.batch_size < world:
            raise InputError(f"--batch-size {settings.batch_size} is smaller than the {world} processes")
        seed_everything(settings.seed)  # the same initial weights in every process
        try:
            self.model = model_class(config["model"]).from_config(config["model_options"], stack.box).to(self.device)
        except ValueError as err:
            raise InputError(f"--model {config['model']}: {err}") from None
        distributed.init(self.processes, self.device)
        seed_everything(settings.seed + self.processes.rank)  # a different noise stream per process
        module = _LossOf(self.model)
        # find_unused_parameters: schedules such as spatial-VAE's frozen z leave parameters out of some steps
        self.loss_module = module if world == 1 else torch.nn.parallel.DistributedDataParallel(
            module, find_unused_parameters=True)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, factor=0.5,
                                                                    patience=settings.plateau_patience)
        self.autocast_dtype = autocast_dtype(settings.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        loader = dict(stack=stack, batch_size=settings.batch_size, seed=settings.seed,
                      with_ctf=self.model.uses_ctf, num_workers=settings.num_workers,
                      pin_memory=self.device.type == "cuda", rank=self.processes.rank, world_size=world)
        self.train_sampler, self.train_loader = batch_loader(indices=train_idx, shuffle=True,
                                                             epoch_size=settings.epoch_size, **loader)
        self.val_sampler, self.val_loader = batch_loader(indices=val_idx, shuffle=False, **loader)
        self.epoch, self.best, self.stale_epochs, self.history = 0, math.inf, 0, []
        #: epochs held by checkpoints/last.pt (None: no checkpoint yet); particles per micro-batch (None: whole
        #: batches; set when memory runs out)
        self.saved_epoch, self.micro_batch = None, None

    # --- state --------------------------------------------------------------------------------------------

    def state(self, rng: list) -> dict:
        """The checkpoint dict (see :mod:`emgroup.train.checkpoint`); ``rng`` holds every process's RNG state."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": self.epoch,
                "rng": rng, "best": self.best, "stale_epochs": self.stale_epochs, "history": self.history,
                "micro_batch": self.micro_batch, "config": self.config}

    def load_state(self, state: dict) -> None:
        """Continue from a checkpoint dict exactly where it was written."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best, self.stale_epochs = state["epoch"], state["best"], state["stale_epochs"]
        self.saved_epoch, self.micro_batch = self.epoch, state.get("micro_batch")
        self.history = list(state["history"])
        rank, world = self.processes.rank, self.processes.world_size
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][rank])
        else:  # another number of processes: continue, reproducibly, but not bit for bit
            seed_everything(int(np.random.SeedSequence([self.settings.seed, self.epoch, rank]).generate_state(1)[0]))

    # --- loop ---------------------------------------------------------------------------------------------

    def fit(self) -> str:
        """Train until ``epochs`` or early stopping; returns why it stopped. SIGTERM acts like Ctrl-C
        (KeyboardInterrupt): ``checkpoints/last.pt`` keeps the last complete epoch (:attr:`saved_epoch`). A new
        run that stops before its first checkpoint (interrupted, or bad data) leaves no run files behind.
        :class:`InputError` for particles with NaN/Inf pixels and for a loss that turns NaN/Inf; neither
        touches a checkpoint."""
        settings = self.settings
        try:
            with sigterm_interrupts():
                while self.epoch < settings.epochs:
                    if self.stale_epochs >= settings.early_stop:
                        return f"stopped early: no improvement for {settings.early_stop} epochs"
                    self._epoch()
        except BaseException:
            if self.saved_epoch is None and self.processes.main:
                self._remove_run_files()
            raise
        return f"finished {settings.epochs} epochs"

    def _remove_run_files(self) -> None:
        """Delete what this new run wrote: ``config.json``, ``metrics.csv`` and ``checkpoints/`` (a ``best.pt``
        written just before the interruption, with no ``last.pt`` to resume from)."""
        for name in (CONFIG, METRICS):
            (self.rundir / name).unlink(missing_ok=True)
        shutil.rmtree(self.rundir / CHECKPOINTS, ignore_errors=True)

    def _epoch(self) -> None:
        self.model.on_epoch_start(self.epoch)
        self.train_sampler.set_epoch(self.epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        train = self._pass(self.train_loader, self.train_sampler, train=True)
        train_seconds = time.perf_counter() - start
        val = self._pass(self.val_loader, self.val_sampler, train=False) if len(self.val_sampler) else {}
        for kind, terms in (("training", train), ("validation", val)):
            if not all(map(math.isfinite, terms.values())):
                kept = (f"checkpoints/last.pt keeps epoch {self.saved_epoch}" if self.saved_epoch is not None
                        else "no checkpoint was written")
                raise InputError(f"the {kind} loss of epoch {self.epoch + 1} is {terms['loss']} with finite "
                                 f"particles: training diverged (try a smaller --lr, or --precision fp32); {kept}",
                                 self.rundir)
        monitored = (val or train)["loss"]
        self.scheduler.step(monitored)
        improved = math.isinf(self.best) or monitored < self.best - MIN_IMPROVEMENT * abs(self.best)
        self.best, self.stale_epochs = (monitored, 0) if improved else (self.best, self.stale_epochs + 1)
        self.epoch += 1
        n_train = sum(self.train_sampler.global_sizes())
        self.history.append({"epoch": self.epoch, **{f"train_{k}": v for k, v in train.items()},
                             **{f"val_{k}": v for k, v in val.items()}, "lr": lr,
                             "particles_per_s": n_train / train_seconds,
                             "seconds": time.perf_counter() - start})
        rng = distributed.all_gather(rng_state())
        if self.processes.main:
            state = self.state(rng)
            if improved:
                save_checkpoint(checkpoint_path(self.rundir, "best"), state)
            save_checkpoint(checkpoint_path(self.rundir, "last"), state)
            self.saved_epoch = self.epoch
            self.write_metrics()
            if self.progress:
                tqdm.write(f"epoch {self.epoch}: " + "  ".join(
                    f"{k} {v:.5g}" for k, v in self.history[-1].items() if k.endswith("loss")))

    def _pass(self, loader, sampler, train: bool) -> dict[str, float]:
        """One pass over ``loader``; the mean of each loss term over all particles of all processes."""
        self.model.train(train)
        world, sizes = self.processes.world_size, sampler.global_sizes()
        names, sums, count = None, 0.0, 0
        bar = tqdm(total=sum(sizes), unit="particle", leave=False, desc=f"epoch {self.epoch + 1}",
                   disable=not (train and self.progress and self.processes.main))
        with bar, torch.set_grad_enabled(train):
            for step, batch in enumerate(loader):
                require_finite(self.stack, batch["index"].numpy(), batch["images"].numpy())
                batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
                n = len(batch["index"])
                # DDP averages gradients over processes: weight each share so the result is the gradient of the
                # mean over the global batch, as one process would compute it
                terms = self._step(batch, train, weight=world / sizes[step])
                names = names or list(terms)
                sums = sums + torch.stack([terms[name] for name in names]) * n
                count += n
                bar.update(sizes[step])
                if step % 10 == 0 and not bar.disable:
                    bar.set_postfix(loss=f"{terms['loss'].item():.5g}")
        totals = distributed.all_sum(torch.cat([sums, torch.tensor([count], device=sums.device)]))
        return {name: (totals[i] / totals[-1]).item() for i, name in enumerate(names)}

    def _step(self, batch: dict, train: bool, weight: float) -> dict:
        """The loss terms of ``batch`` (means over its particles, detached) and, when training, one optimizer step
        on the gradient of ``weight`` x the sum of the particles' losses. The batch goes through the model in
        micro-batches of :attr:`micro_batch` particles (whole when None) whose gradients add up; when memory runs
        out, the micro-batch is halved, the log says so, and the step is done again."""
        while True:
            try:
                return self._accumulated_step(batch, train, weight)
            except RuntimeError as err:
                if not _out_of_memory(err):
                    raise
                problem = str(err).strip().splitlines()[0]
            self._halve_micro_batch(len(batch["index"]), problem)  # out of the except: the failed step is freed

    def _accumulated_step(self, batch: dict, train: bool, weight: float) -> dict:
        n = len(batch["index"])
        size = min(self.micro_batch or n, n)
        if train:
            self.optimizer.zero_grad(set_to_none=True)
        sums = None
        for start in range(0, n, size):
            part = {key: value[start:start + size] for key, value in batch.items()}
            m = len(part["index"])
            with torch.autocast(self.device.type, self.autocast_dtype, enabled=self.autocast_dtype is not None):
                terms = self.loss_module(part) if train else self.model.loss(part)
            if train:
                self.scaler.scale(terms["loss"] * (m * weight)).backward()
            values = {name: term.detach().double() * m for name, term in terms.items()}
            sums = values if sums is None else {name: sums[name] + values[name] for name in sums}
        if train:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return {name: total / n for name, total in sums.items()}

    def _halve_micro_batch(self, n: int, problem: str) -> None:
        """After running out of memory on ``n`` particles at a time: half as many per micro-batch, announced."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        current = min(self.micro_batch or n, n)
        if current == 1 or self.processes.world_size > 1:
            why = ("even with one particle at a time" if current == 1 else
                   f"with {current} particles at a time in process {self.processes.rank} (micro-batches are not "
                   "coordinated across torchrun processes: lower --batch-size)")
            raise InputError(f"out of memory on {self.device} {why} ({problem})")
        self.micro_batch = (current + 1) // 2
        if self.processes.main:
            tqdm.write(f"out of memory on {self.device} with {current} particles at a time ({problem}); continuing "
                       f"with micro-batches of {self.micro_batch}, gradients accumulated over each batch of "
                       f"{self.settings.batch_size} (the same optimisation steps)", file=sys.stderr)

    def write_metrics(self) -> None:
        """``metrics.csv`` from the history, atomically."""
        with atomic_path(self.rundir / METRICS) as tmp:
            pd.DataFrame(self.history).to_csv(tmp, index=False, float_format="%.9g")


class _LossOf(torch.nn.Module):
    """Routes ``model.loss`` through ``forward`` so DistributedDataParallel can wrap it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)


def _out_of_memory(err: RuntimeError) -> bool:
    """Whether ``err`` is torch running out of memory (CUDA: ``torch.OutOfMemoryError``; CPU: a RuntimeError
    from the allocator)."""
    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--precision`` on ``device``: bf16 on CUDA and the CPU, fp16 on CUDA only."""
    dtype = PRECISIONS[precision]
    return dtype if device.type == "cuda" or dtype == torch.bfloat16 else None


def native_precision(device: torch.device) -> str:
    """What ``--precision auto`` trains in on ``device``: bf16 where it computes bf16 natively (CUDA with bf16,
    CPUs with AVX512-BF16 or AMX), fp32 elsewhere (a CPU without them emulates bf16, slower than fp32)."""
    native = (torch.cuda.is_bf16_supported() if device.type == "cuda"
              else device.type == "cpu" and bool(cpu_has_native_bf16()))
    return "bf16" if native else "fp32"


def cpu_has_native_bf16() -> bool | None:
    """Whether the CPU computes bf16 products natively (AVX512-BF16 or AMX; Linux only, else None)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def new_run(particles, rundir, model: str, model_options: dict, settings: TrainSettings, *, root=None,
            force: bool = False, progress: bool = True) -> Trainer:
    """A trainer for a new run of ``model`` on ``particles`` in ``rundir``, after checking every input; writes
    ``config.json`` (a run already in ``rundir`` is refused unless ``force``: then its files are removed).

    ``model_options`` maps ``Config`` field names to values; missing or ``None`` ones take the model's defaults.
    """
    rundir = Path(rundir)
    if rundir.exists() and not rundir.is_dir():
        raise InputError("run folder is a file", rundir)
    if holds_run(rundir) and not force:
        raise InputError("holds another run; pass --resume to continue it or --force to replace it", rundir)
    if model not in MODELS:
        raise InputError(f"unknown model {model!r} (available: {', '.join(MODELS)})")
    if settings.precision not in (*PRECISIONS, "auto"):
        raise InputError(f"--precision {settings.precision}: expected auto or one of {', '.join(PRECISIONS)}")
    cls = model_class(model)
    foreign = sorted(set(k for k, v in model_options.items() if v is not None)
                     - {f.name for f in dataclasses.fields(cls.Config)})
    if foreign:
        raise InputError(f"{', '.join(map(_flag, foreign))}: not an option of --model {model}")
    options = {k: v for k, v in model_options.items() if v is not None}
    stack = Stack.open(particles, cls.data_ndim(options), root)
    options["ctf"] = _resolve_ctf(options.get("ctf"), stack, particles)
    config = {"model": model, "model_options": options, "training": dataclasses.asdict(settings),
              "box": stack.box, "apix": stack.apix,
              "particles": str(Path(particles).resolve()), "root": None if root is None else str(root),
              "world_size": distributed.from_environment().world_size, "version": __version__}
    trainer = Trainer(config, settings, stack, rundir, progress)
    # record every model option, defaults included, and the precision --precision auto chose
    config["model_options"] = {**dataclasses.asdict(trainer.model.config), **options}
    config["training"] = dataclasses.asdict(trainer.settings)
    if trainer.processes.main:
        if force:
            for path in (rundir / CONFIG, rundir / METRICS):
                path.unlink(missing_ok=True)
            shutil.rmtree(rundir / CHECKPOINTS, ignore_errors=True)
        write_config(rundir, config)
    distributed.barrier()
    return trainer


def resume_run(rundir, changes: dict | None = None, *, particles=None, model: str | None = None,
               model_options: dict | None = None, progress: bool = True) -> Trainer:
    """A trainer continuing the run in ``rundir`` from ``checkpoints/last.pt``, bit for bit.

    ``changes`` maps settings to new values: only those in :data:`RESUME_MAY_CHANGE` may differ from the run's.
    ``particles``, ``model`` and ``model_options`` (non-None values), when given, must match the run's.
    """
    rundir = Path(rundir)
    config = read_config(rundir)
    if model is not None and model != config["model"]:
        raise InputError(f"holds a --model {config['model']} run, not {model}", rundir)
    if particles is not None and Path(particles).resolve() != Path(config["particles"]):
        raise InputError(f"the run in {rundir} was trained on {config['particles']}", particles)
    # runs from before --epoch-size train on every particle
    stored = {"epoch_size": None, **config["model_options"], **config["training"]}
    given = {**{k: v for k, v in (model_options or {}).items() if v is not None}, **(changes or {})}
    for name, value in given.items():
        if name not in RESUME_MAY_CHANGE and value != stored.get(name):
            raise InputError(f"{_flag(name)} {value} differs from the run's {stored.get(name)}; a resumed run "
                             f"keeps its options (only {', '.join(map(_flag, RESUME_MAY_CHANGE))} may change)",
                             rundir)
    missing = [f.name for f in dataclasses.fields(TrainSettings) if f.name not in {**stored, **given}]
    if missing:
        raise InputError(f"not a run config (its options lack {', '.join(missing)})", rundir / CONFIG)
    settings = TrainSettings(**{f.name: given.get(f.name, stored[f.name]) for f in dataclasses.fields(TrainSettings)})
    state = load_checkpoint(checkpoint_path(rundir, "last"))
    stack = Stack.open(config["particles"], model_class(config["model"]).data_ndim(stored), config.get("root"))
    config = {**config, "training": dataclasses.asdict(settings),
              "world_size": distributed.from_environment().world_size}
    trainer = Trainer(config, settings, stack, rundir, progress)
    trainer.load_state(state)
    if trainer.processes.main:
        write_config(rundir, config)
        trainer.write_metrics()  # drops rows of an epoch whose checkpoint never completed
    distributed.barrier()
    return trainer


def _resolve_ctf(ctf: bool | None, stack, particles) -> bool:
    """The ``ctf`` model option: as given, or (None) on exactly when the particles carry defocus; InputError for
    --ctf on particles without defocus."""
    with_defocus = has_ctf(stack.meta)
    if ctf and not with_defocus:
        raise InputError(f"--ctf: the particles carry no defocus ({'/'.join(DEFOCUS_LABELS)}); pass --no-ctf",
                         particles)
    return with_defocus if ctf is None else ctf


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
