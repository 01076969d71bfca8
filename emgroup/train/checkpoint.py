"""Run folders and checkpoints: what `emgroup train` writes and `emgroup analyze` reads back.

A run folder holds ``config.json`` (model name, the model's options and the training settings apart, box, pixel
size, particles path, version; :func:`run_config` reads the older layout too),
``metrics.csv`` (one row per epoch) and ``checkpoints/last.pt`` (every epoch) / ``checkpoints/best.pt`` (on
validation improvement). A checkpoint is a dict: ``model`` (state dict), ``optimizer``, ``scheduler``, ``scaler``
(fp16 only), ``epoch`` (epochs completed), ``rng`` (per-rank RNG states), ``best`` (best monitored loss),
``stale_epochs`` (epochs since it improved), ``micro_batch`` (particles per micro-batch after running out of
memory, or None), ``history`` (the metrics rows so far) and ``config``.
"""

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch

from emgroup.errors import InputError
from emgroup.io.atomic import atomic_path
from emgroup.models.registry import build_model

@dataclasses.dataclass
class TrainSettings:
    """Options of the loop itself (a model's own options live in its ``Config``)."""

    epochs: int = 50  # maximum number of passes over the training particles
    epoch_size: int | None = None  # training particles per epoch (a new seeded subset each epoch); None: all
    batch_size: int = 100  # particles per optimisation step, over all processes
    lr: float = 1e-3  # Adam learning rate
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 0  # DataLoader worker processes
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 on CUDA only) | auto (resolved by the Trainer)
    val_fraction: float | None = None  # None: the preprocess split column, else 0.1
    plateau_patience: int = 10  # epochs without improvement before the learning rate is halved
    early_stop: int = 20  # epochs without improvement before training stops


def run_config(config: dict) -> dict:
    """``config`` in the current layout, ``model_options`` (the model's ``Config`` fields) and ``training`` (the
    :class:`TrainSettings`) apart; a config written before they were (one ``options`` dict holding both) is split
    into them, any other returned as it is."""
    if "model_options" in config or not isinstance(config.get("options"), dict):
        return config
    settings = {f.name for f in dataclasses.fields(TrainSettings)}
    options, rest = config["options"], {key: value for key, value in config.items() if key not in ("model", "options")}
    return {"model": config.get("model"),
            "model_options": {name: value for name, value in options.items() if name not in settings},
            "training": {name: value for name, value in options.items() if name in settings}, **rest}


CONFIG = "config.json"
METRICS = "metrics.csv"
CHECKPOINTS = "checkpoints"


def checkpoint_path(rundir, checkpoint: str = "best") -> Path:
    """``RUNDIR/checkpoints/{best,last}.pt`` for ``"best"``/``"last"``; any other value is a checkpoint path."""
    if checkpoint in ("best", "last"):
        return Path(rundir) / CHECKPOINTS / f"{checkpoint}.pt"
    return Path(checkpoint)


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (an interrupted write leaves the previous checkpoint intact)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, device="cpu") -> dict:
    """A checkpoint dict with its tensors on ``device``; :class:`InputError` when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such checkpoint", path)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise InputError(f"not a readable emgroup checkpoint ({type(err).__name__})", path) from None


def load_run(rundir, checkpoint: str = "best", device="cpu"):
    """The trained model of a run (in eval mode, on ``device``) and the run's config dict.

    ``checkpoint`` is ``"best"``, ``"last"`` or a path to a ``.pt`` file.
    """
    path = checkpoint_path(rundir, checkpoint)
    state = load_checkpoint(path, device)
    config = run_config(state["config"])
    try:
        model = build_model(config["model"], config["model_options"], config["box"])
    except ValueError as err:
        raise InputError(f"its config does not build a --model {config['model']}: {err}", path) from None
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config


def write_config(rundir, config: dict) -> None:
    """``RUNDIR/config.json``, written atomically."""
    with atomic_path(Path(rundir) / CONFIG) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")


#: what every config.json holds: the model's name and options (a dict), the training settings (a dict), the data
CONFIG_KEYS = ("model", "model_options", "training", "box", "apix", "particles")


def read_config(rundir) -> dict:
    """The config of the run in ``rundir`` in the current layout (:func:`run_config`); :class:`InputError` when
    there is none or it is not a run's config (not JSON, or without :data:`CONFIG_KEYS`)."""
    path = Path(rundir) / CONFIG
    if not path.is_file():
        raise InputError(f"no {CONFIG} (not an emgroup run folder)", rundir)
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"not a readable run config (not JSON: {err})", path) from None
    config = run_config(config) if isinstance(config, dict) else {}
    missing = [key for key in CONFIG_KEYS if key not in config]
    missing += [key for key in ("model_options", "training") if key in config and not isinstance(config[key], dict)]
    if missing:
        raise InputError(f"not a run config (no {', '.join(missing)} entry)", path)
    return config


def rng_state() -> dict:
    """The RNG states of python, numpy and torch (CPU and, when present, CUDA) in a form ``torch.load`` accepts
    with ``weights_only``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                    gauss), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(_as_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_tuples(value):
    """Nested lists back to the nested tuples ``random.setstate`` wants."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
