"""The one interface every model implements, so the trainer and `analyze` never branch on model type.

Conventions (pinned by tests):
  * images are float32 tensors ``(N, D, D)`` (row = y, column = x); volumes ``(N, D, D, D)`` (z, y, x);
  * ``theta`` is an in-plane angle in radians and ``shift`` an ``(N, 2)`` translation in pixels, ordered (x, y),
    with the meaning ``image(x) = canonical(R(theta) @ x + shift)`` on the pixel grid centred at ``D // 2``
    (see :mod:`emgroup.models.grids`); ``rotation`` is an ``(N, 3, 3)`` matrix for SO(3) models.
"""

import abc
import dataclasses
import enum
from typing import ClassVar

import torch
from torch import nn

from emgroup.ctf import apply_ctf, ctf_rfft

Batch = dict[str, torch.Tensor]
"""A training batch: ``images`` (N, D, D) or (N, D, D, D) float32; ``index`` (N,) particle indices; when the model
uses the CTF, ``ctf_parameters`` (N, 9) float64, each particle's row of :data:`emgroup.ctf.CTF_PARAMETERS`."""


def option(default, help: str, **metadata):
    """A model config field that becomes a `emgroup train` option; ``help`` states units. Metadata
    ``default_help`` replaces the listed defaults in the option's help (for a default the data decide)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def ctf_option():
    """The ``ctf`` field every image model's ``Config`` has (`emgroup train` decides it from the data when not
    given)."""
    return option(False, "Multiply each generated image by its particle's CTF (rlnDefocusU/V/Angle, voltage, Cs, "
                  "amplitude contrast, phase shift, B-factor from the STAR) in Fourier space before the likelihood: "
                  "the generator draws the particle as it is before the microscope.",
                  default_help="on when the particles carry defocus (rlnDefocusU/V/Angle), else off")


def check_ctf_likelihood(ctf: bool, likelihood: str) -> None:
    """ValueError for a CTF with a Bernoulli likelihood (the CTF acts on image values, not on logits)."""
    if ctf and likelihood != "gaussian":
        raise ValueError("the CTF needs --likelihood gaussian (pass --no-ctf for images in [0, 1] such as MNIST)")


class Pose(enum.Enum):
    """The pose a model infers for each particle, i.e. the pose entries of :meth:`Model.encode`."""

    NONE = "none"  #: no pose entry: each image is seen as it is (identity pose)
    IN_PLANE = "in-plane"  #: ``theta`` (N,) rad and/or ``shift`` (N, 2) px
    SO3 = "SO(3)"  #: ``rotation`` (N, 3, 3), RELION's matrix A


class Model(nn.Module):
    """Base class. Subclasses set ``name``, a dataclass ``Config`` built with :func:`option`, declare ``ndim`` and
    ``pose`` (class attributes, or properties when an option decides them) and implement :meth:`loss`,
    :meth:`encode` and :meth:`decode`; a model that learns a group action on its latent also implements
    :class:`GroupAction`. The trainer and `analyze` read these declarations and never look for anything else.

    Every field of every registered model's ``Config`` is exposed as an `emgroup train` option
    (``z_dim`` -> ``--z-dim``); a field shared by several models means the same thing in each, except one with
    per-model ``choices`` (``group``): its help lists every model's meaning and `emgroup train` accepts only the
    chosen model's choices.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    #: dimensionality of the data: 2 (particle images) or 3 (volumes); the class's default, which an instance
    #: replaces by :meth:`data_ndim` of its options
    ndim: int = 2
    #: the pose :meth:`encode` infers
    pose: Pose = Pose.NONE

    def __init__(self, config, box: int):
        super().__init__()
        self.config = config
        self.box = box
        self.ndim = self.data_ndim(dataclasses.asdict(config))

    @classmethod
    def data_ndim(cls, options: dict) -> int:
        """Dimensionality of the data a model built from ``options`` trains on (2: images, 3: volumes); the
        class's ``ndim`` unless an option decides it (e.g. the masked model's ``group``)."""
        return cls.ndim

    @classmethod
    def from_config(cls, options: dict, box: int) -> "Model":
        """Build from a dict of ``Config`` field values (``None`` values take the defaults); ValueError naming any
        key that is not a field."""
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls.Config)})
        if unknown:
            raise ValueError(f"{cls.__name__} has no option {', '.join(map(repr, unknown))}")
        return cls(cls.Config(**{k: v for k, v in options.items() if v is not None}), box)

    @property
    def uses_ctf(self) -> bool:
        """Whether :meth:`loss` needs the batch's ``ctf`` (the ``ctf`` option every model's ``Config`` has)."""
        return self.config.ctf

    def observed(self, images: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Generated images (N, D, D) as the microscope records them: times each particle's CTF in Fourier space
        when the model uses the CTF, else unchanged."""
        return apply_ctf(images, ctf_rfft(self.box, batch["ctf_parameters"])) if self.uses_ctf else images

    def encoder_input(self, images: torch.Tensor, ctf_parameters: torch.Tensor | None) -> torch.Tensor:
        """What the encoder sees: the images (N, D, D), phase-flipped (times the sign of each CTF in Fourier space)
        when the model uses the CTF, so that a particle's contrast does not change sign with its defocus."""
        if not self.uses_ctf:
            return images
        if ctf_parameters is None:
            raise ValueError("this model was trained with the CTF: pass each particle's CTF parameters")
        return apply_ctf(images, torch.sign(ctf_rfft(self.box, ctf_parameters))).to(images.dtype)

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for schedules that depend on the epoch (e.g. spatial-VAE's frozen z). Epochs count from 0."""

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Scalar loss terms; ``"loss"`` is the total to minimise (per particle, averaged over the batch)."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor, ctf_parameters: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Deterministic inference: ``z`` (N, k) latent means, ``z_std`` (N, k), and the pose entries the model
        has (``theta``, ``shift``, ``rotation``) plus any model-specific posteriors (e.g. ``q_tr``).
        ``ctf_parameters`` (N, 9): each image's CTF, given when the model uses the CTF (:attr:`uses_ctf`)."""
        raise NotImplementedError

    def decode(self, latent: dict[str, torch.Tensor]) -> torch.Tensor:
        """Images (N, D, D) (or volumes) from a dict shaped like :meth:`encode`'s output; missing pose entries
        mean the canonical pose (theta = 0, shift = 0, identity rotation)."""
        raise NotImplementedError


class GroupAction(abc.ABC):
    """The interface of a model that learns how a group acts on its latent (the masked model): the latent ``z``
    (N, k) splits by channel into ``z_v``, on which the group acts, and ``z_i``, which it leaves unchanged, and
    ``Phi_g(z) = g.z_v + z_i`` decodes to the data turned by g. `analyze` asks ``isinstance(model, GroupAction)``
    and draws the channel mask, latents with swapped parts and the predicted action."""

    @abc.abstractmethod
    def channel_mask(self) -> torch.Tensor:
        """(C,) binary mask of the latent channels, 1 = acted on (z_v)."""

    @abc.abstractmethod
    def swap(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """Flattened latents (N, k) with the z_v of ``z_a`` and the z_i of ``z_b`` (both (N, k))."""

    @abc.abstractmethod
    def turns(self, angles: torch.Tensor) -> torch.Tensor:
        """Group elements g for turns by ``angles`` (N,) rad: in-plane for images, about the y axis for volumes."""

    @abc.abstractmethod
    def transform(self, data: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """T_g of data (N, D, D[, D]): the data turned by g, as the model sees data (e.g. masked to a disc)."""

    @abc.abstractmethod
    def predict(self, data: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The model's T_g of ``data``: D(Phi_g(E(data)))."""
