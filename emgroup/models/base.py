"""The one interface every model implements, so the trainer and `analyze` never branch on model type.

Conventions (pinned by tests):
  * images are float32 tensors ``(N, D, D)`` (row = y, column = x); volumes ``(N, D, D, D)`` (z, y, x);
  * ``theta`` is an in-plane angle in radians and ``shift`` an ``(N, 2)`` translation in pixels, ordered (x, y),
    with the meaning ``image(x) = canonical(R(theta) @ x + shift)`` on the pixel grid centred at ``D // 2``
    (see :mod:`emgroup.models.grids`); ``rotation`` is an ``(N, 3, 3)`` matrix for SO(3) models.
"""

import dataclasses
from typing import ClassVar

import torch
from torch import nn

Batch = dict[str, torch.Tensor]
"""A training batch: ``images`` (N, D, D) or (N, D, D, D) float32; ``index`` (N,) particle indices; optional
``ctf`` (N, D, D // 2 + 1), each particle's CTF on the ``torch.fft.rfft2`` grid of its image."""


def option(default, help: str, **metadata):
    """A model config field that becomes a `emgroup train` option; ``help`` states units."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


class Model(nn.Module):
    """Base class. Subclasses set ``name``, a dataclass ``Config`` built with :func:`option`, and implement
    :meth:`loss`, :meth:`encode` and :meth:`decode`.

    Every field of every registered model's ``Config`` is exposed as an `emgroup train` option
    (``z_dim`` -> ``--z-dim``); a field shared by several models must mean the same thing in each.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    #: image dimensionality the model accepts: 2 (particle images) or 3 (volumes)
    ndim: ClassVar[int] = 2

    def __init__(self, config, box: int):
        super().__init__()
        self.config = config
        self.box = box

    @classmethod
    def data_ndim(cls, options: dict) -> int:
        """Dimensionality of the data a model built from ``options`` trains on (2: images, 3: volumes); the
        class's ``ndim`` unless an option decides it (e.g. the masked model's ``group``)."""
        return cls.ndim

    @classmethod
    def from_config(cls, options: dict, box: int) -> "Model":
        """Build from a dict of options (unknown keys and ``None`` values are ignored: defaults apply)."""
        names = {f.name for f in dataclasses.fields(cls.Config)}
        config = cls.Config(**{k: v for k, v in options.items() if k in names and v is not None})
        return cls(config, box)

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for schedules that depend on the epoch (e.g. spatial-VAE's frozen z). Epochs count from 0."""

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Scalar loss terms; ``"loss"`` is the total to minimise (per particle, averaged over the batch)."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Deterministic inference: ``z`` (N, k) latent means, ``z_std`` (N, k), and the pose entries the model
        has (``theta``, ``shift``, ``rotation``) plus any model-specific posteriors (e.g. ``q_tr``)."""
        raise NotImplementedError

    def decode(self, latent: dict[str, torch.Tensor]) -> torch.Tensor:
        """Images (N, D, D) (or volumes) from a dict shaped like :meth:`encode`'s output; missing pose entries
        mean the canonical pose (theta = 0, shift = 0, identity rotation)."""
        raise NotImplementedError
