"""`emgroup train`: fit a model to a particle stack. The model options are generated from every registered
model's ``Config`` (field ``z_dim`` -> ``--z-dim``; bool -> ``--flag/--no-flag``)."""

import contextlib
import dataclasses
import sys
import typing
from pathlib import Path

import click

from emgroup.cli.types import FiniteFloat
from emgroup.devices import MEMORY_SHARE, cpu_memory_cap
from emgroup.io.atomic import output_folder
from emgroup.models import registry
from emgroup.train.checkpoint import TrainSettings
from emgroup.train.trainer import PRECISIONS, cpu_has_native_bf16, new_run, resume_run

DEFAULTS = TrainSettings()
FILE = click.Path(path_type=Path)


def _model_options() -> dict[str, click.Option]:
    """Config field name -> click option, over the fields of every model (defaults stay None, so the
    chosen model's own default applies; the help lists each model's default, and each model's meaning when the
    models' helps differ, e.g. ``--group``)."""
    owners: dict[str, list] = {}
    for name in registry.MODELS:
        config = registry.model_class(name).Config
        types = typing.get_type_hints(config)
        for field in dataclasses.fields(config):
            owners.setdefault(field.name, []).append((name, field, types[field.name]))
    options = {}
    for name, fields in owners.items():
        _, field, kind = fields[0]
        defaults: dict[str, list[str]] = {}
        helps: dict[str, list[str]] = {}
        for model, f, _ in fields:
            defaults.setdefault(str(f.default), []).append(model)
            helps.setdefault(f.metadata["help"], []).append(model)
        meaning = field.metadata["help"] if len(helps) == 1 else " ".join(
            f"--model {', '.join(models)}: {text}" for text, models in helps.items())
        help_text = meaning + " [default: " + field.metadata.get("default_help", ", ".join(
            f"{value} ({', '.join(models)})" for value, models in defaults.items())) + "]"
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            options[name] = click.Option([f"{flag}/--no-{flag[2:]}", name], default=None, help=help_text)
        else:
            choices = [c for _, f, _ in fields for c in f.metadata.get("choices", ())]  # union over the models
            kind = click.Choice(list(dict.fromkeys(choices))) if choices else FiniteFloat() if kind is float else kind
            options[name] = click.Option([flag, name], type=kind, default=None, help=help_text)
    return options


MODEL_OPTIONS = _model_options()
SETTINGS = [f.name for f in dataclasses.fields(TrainSettings)]


def _train(particles, rundir, model, resume, force, root, progress, memory_limit, **options):
    if resume and force:
        raise click.UsageError("--resume and --force exclude each other")
    with output_folder(rundir):  # a new run that fails before its first checkpoint leaves no folder
        _train_in(rundir, particles, model, resume, force, root, progress, memory_limit, options)


def _check_choices(model: str, model_options: dict) -> None:
    """UsageError for a value outside the choices ``model`` gives an option whose choices differ between models
    (``--group``: P4/P8/P16 for target, SO2/SO3 for masked); click checked only the union of every model's."""
    for field in dataclasses.fields(registry.model_class(model).Config):
        choices, value = field.metadata.get("choices"), model_options.get(field.name)
        if choices and value is not None and value not in choices:
            flag = "--" + field.name.replace("_", "-")
            raise click.UsageError(f"{flag} {value} is not a choice of --model {model}: {', '.join(choices)}")


def _train_in(rundir, particles, model, resume, force, root, progress, memory_limit, options):
    ctx = click.get_current_context()
    given = {name for name in options if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
    model_options = {name: options[name] for name in MODEL_OPTIONS}
    if model is not None:
        _check_choices(model, model_options)
    if resume:
        trainer = resume_run(rundir, {name: options[name] for name in SETTINGS if name in given}, particles=particles,
                             model=model, model_options=model_options, progress=progress)
    else:
        if particles is None or model is None:
            raise click.UsageError("PARTICLES and --model are needed (unless --resume)")
        settings = TrainSettings(**{name: options[name] for name in SETTINGS})
        trainer = new_run(particles, rundir, model, model_options, settings, root=root, force=force,
                          progress=progress)
    main = trainer.processes.main
    if main and progress:  # config.json records it too
        click.echo("CTF: " + ("each generated image is multiplied by its particle's CTF (rlnDefocusU/V/Angle)"
                              if trainer.model.uses_ctf else "not modelled"), err=True)
    if main and trainer.settings.precision != "fp32" and trainer.autocast_dtype is None:
        click.echo(f"note: --precision {trainer.settings.precision} applies on CUDA only; "
                   f"training in fp32 on {trainer.device}", err=True)
    if (main and trainer.autocast_dtype is not None and trainer.device.type == "cpu"
            and cpu_has_native_bf16() is False):
        click.echo("note: this CPU has no native bf16 (AVX512-BF16 or AMX): --precision bf16 may be slower than "
                   "fp32 here", err=True)
    cap = (cpu_memory_cap(memory_limit, trainer.processes.local_world_size) if trainer.device.type == "cpu" else
           contextlib.nullcontext())
    try:
        with cap:
            why = trainer.fit()
    except KeyboardInterrupt:
        if main:
            click.echo(f"interrupted; {rundir / 'checkpoints' / 'last.pt'} holds epoch {trainer.saved_epoch} "
                       "(continue with --resume)" if trainer.saved_epoch is not None else
                       "interrupted in epoch 1, before the first checkpoint: nothing kept",
                       err=True)
        sys.exit(130)
    if main:
        click.echo(f"{why}; best loss {trainer.best:.6g}; run in {rundir}")


_PARAMS = [
    click.Argument(["particles"], type=FILE, required=False),
    click.Option(["-o", "--rundir"], type=FILE, required=True,
                 help="Run folder: config.json, metrics.csv, checkpoints/{last,best}.pt."),
    click.Option(["--model"], type=click.Choice(list(registry.MODELS)), default=None,
                 help="spatial: spatial-VAE; target: TARGET-VAE; masked: masked-latent group action; vae: VAE / "
                      "beta-VAE baseline. [required unless --resume]"),
    click.Option(["--epochs"], type=click.IntRange(1), default=DEFAULTS.epochs, show_default=True,
                 help="Maximum number of passes over the training particles (may be raised on --resume)."),
    click.Option(["--epoch-size"], type=click.IntRange(1), default=DEFAULTS.epoch_size,
                 help="Training particles per epoch, a new seeded random subset each epoch (for stacks too large "
                      "to pass over between validations). [default: all]"),
    click.Option(["--batch-size"], type=click.IntRange(1), default=DEFAULTS.batch_size, show_default=True,
                 help="Particles per optimisation step, over all processes (torchrun splits it); out of memory, "
                      "one process splits it into micro-batches and says so."),
    click.Option(["--lr"], type=FiniteFloat(0, min_open=True), default=DEFAULTS.lr, show_default=True,
                 help="Adam learning rate (per step)."),
    click.Option(["--seed"], type=int, default=DEFAULTS.seed, show_default=True,
                 help="Random seed of weights, shuffling and sampling (same seed, same metrics)."),
    click.Option(["--device"], default=DEFAULTS.device, show_default=True,
                 help="auto (the GPU when there is one), cpu, cuda or cuda:N; under torchrun process r takes GPU r."),
    click.Option(["--num-workers"], type=click.IntRange(0), default=DEFAULTS.num_workers, show_default=True,
                 help="DataLoader processes reading batches from the stack (0: read in the training process)."),
    click.Option(["--precision"], type=click.Choice([*PRECISIONS, "auto"]), default=DEFAULTS.precision,
                 show_default=True, help="Autocast precision: bf16 on CUDA and on CPUs with AMX/AVX512-BF16 "
                 "(TARGET-VAE 2.5x faster on 2 such cores, see docs/train.md); fp16 on CUDA only, with gradient "
                 "scaling; auto: bf16 where the device computes it natively, else fp32 (config.json records "
                 "which)."),
    click.Option(["--val-fraction"], type=FiniteFloat(0, 1, max_open=True), default=None,
                 help="Fraction of particles held out for validation (seeded random choice). [default: the "
                      "rlnEmgroupSplit column written by `emgroup preprocess`, else 0.1]"),
    click.Option(["--plateau-patience"], type=click.IntRange(1), default=DEFAULTS.plateau_patience,
                 show_default=True, help="Epochs without validation improvement before the learning rate halves."),
    click.Option(["--early-stop"], type=click.IntRange(1), default=DEFAULTS.early_stop, show_default=True,
                 help="Epochs without validation improvement before training stops."),
    click.Option(["--resume"], is_flag=True,
                 help="Continue the run in RUNDIR from checkpoints/last.pt, exactly as if never stopped."),
    click.Option(["--force"], is_flag=True, help="Replace a run already in RUNDIR."),
    click.Option(["--memory-limit"], type=FiniteFloat(0, min_open=True), default=None,
                 help="CPU training: the most memory (GiB) the process may take beyond what it holds once the "
                      "model and data are set up; a batch that needs more is split into micro-batches (announced) "
                      "instead of the system killing the run. [default: "
                      f"{MEMORY_SHARE:.0%} of the memory the system has available, shared by the processes on "
                      "this node]"),
    click.Option(["--root"], type=FILE, default=None,
                 help="Folder tried first when resolving image paths in a STAR file."),
    click.Option(["--progress/--no-progress"], default=True, show_default=True,
                 help="Show a progress bar and a line per epoch."),
]

command = click.Command(
    "train", callback=_train, params=_PARAMS + list(MODEL_OPTIONS.values()),
    help="Train a model on PARTICLES (.star, .mrcs or .cs; volumes for 3-D models) into RUNDIR.\n\n"
         "Model options are listed after the training options; each says which models take it and their "
         "defaults. Several processes or GPUs: torchrun --nproc-per-node N -m emgroup train ...\n\n"
         "\b\nExample:\n  emgroup train prep/particles.star -o runs/spatial --model spatial --z-dim 2 --epochs 20")
