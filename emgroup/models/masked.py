"""Masked-latent group action (Swarnali, Zhang & Hossain 2025, "Learning group actions in disentangled latent image
representations"), for in-plane rotations of images (SO(2)) and 3-D rotations of volumes (SO(3)).

A convolutional encoder E maps x to a latent z of C channels; a learned channel mask M = 1[sigmoid(alpha) > 0.5]
(straight-through: the forward pass is exactly binary, the gradient is that of sigmoid(alpha)) splits it into
z_v = M z, on which the group acts, and z_i = (1 - M) z, which should not change. A decoder D draws
Phi_g(z) = g.z_v + z_i. Training pairs (x, T_g x) are made on the fly (g uniform, angle <= ``max_angle``), and

    L = w_r |D(z) - x|^2 + w_t |D(Phi_g(E x)) - T_g x|^2 + w_inv |z_i(x) - sg z_i(T_g x)|^2
        + w_const |g.z_v(x) - sg z_v(T_g x)|^2                       (sg: stop-gradient; mean squares)

The group element: SO(2) an angle theta (rad) with ``T_theta x(p) = x(R(theta) p)`` (the pose convention of
:mod:`emgroup.models.grids`); SO(3) RELION's matrix A with ``T_A v(p) = v(A^T p)`` (the object turned by A, as
`emgroup simulate --volumes` writes volumes). Data are masked to the inscribed disc/ball so that nothing enters or
leaves the box under rotation. Two actions on z_v:

* ``spatial`` (the paper's): z is a feature map (C, h, w[, l]) and g rotates its grid as T_g rotates the image
  (bilinear/trilinear resampling about the grid's centre; the public code uses exact 90-degree turns);
* ``vector``: z is C vectors of 2 (SO2) or 3 (SO3) components turned by the representation
  ``rho(theta) = R(f_c theta)^T`` (frequencies f_c = 1 + c mod k) or ``rho(A) = A``, a group action like T_g.
  The vectors are centred over the batch (batch norm without scale), since an equivariant vector averages to 0.

Two choices beyond the paper, both needed for stable training (see docs/models-masked.md): the latent is scaled
to unit mean square per sample (without it the stop-gradient consistency loss inflates the latent when the
latent-grid rotation attenuates it), and L_inv/L_const are written linear in M (equal values for a binary mask) so
that the straight-through gradient of channel c weighs its cost as variant against its cost as invariant.
The model is a deterministic autoencoder: ``z_std`` is zero.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from emgroup.ctf import apply_ctf, ctf_rfft, rotate_ctf_parameters
from emgroup.geometry import ball_mask, quaternion_to_matrix, random_rotations, rotate_volumes
from emgroup.models.base import GroupAction, Model, ctf_option, option
from emgroup.models.grids import resample_images, rotation_matrix

#: side (px) the latent grid is brought down to when ``stages`` is 0 (the paper's 28 px -> 7 px)
LATENT_SIDE = 8


@dataclass
class MaskedConfig:
    group: str = option("SO2", "Group acting on the data: SO2 (in-plane rotations of particle images) or SO3 "
                        "(3-D rotations of volumes).", choices=("SO2", "SO3"))
    action: str = option("spatial", "How g acts on the variant latent z_v: 'spatial' (rotate the latent feature "
                         "map like the image, the paper's) or 'vector' (z_v as 2-/3-vectors turned by R).",
                         choices=("spatial", "vector"))
    latent_channels: int = option(64, "Latent channels: feature maps of the latent grid (spatial action) or "
                                  "vectors of 2 (SO2) / 3 (SO3) components (vector action); the mask picks z_v "
                                  "among them.")
    width: int = option(32, "Channels of the first stride-2 convolution (doubling at each further stage).")
    stages: int = option(0, f"Stride-2 convolution stages (0: the fewest that bring the latent grid to at most "
                         f"{LATENT_SIDE} px a side; 28 px -> 7).")
    frequencies: int = option(1, "SO2 vector action: vector c turns by f_c theta, f_c = 1 + (c mod k).")
    output: str = option("linear", "Decoder output: 'linear' (normalized cryo-EM data) or 'tanh' (data scaled to "
                         "[-1, 1], the paper's setting).", choices=("linear", "tanh"))
    mask: bool = option(True, "Learn the channel mask; --no-mask acts on every channel (ablation baseline).")
    max_angle: float = option(180.0, "Largest rotation angle of the training transformations g, degrees "
                              "(180: the whole group).")
    recon_weight: float = option(1.0, "Weight of reconstructing x from E(x) (mean square per pixel).")
    transform_weight: float = option(1.0, "Weight of predicting T_g x from Phi_g(E(x)) (mean square per pixel).")
    inv_weight: float = option(1.0, "Weight of L_inv: z_i(x) matches z_i(T_g x) (0: ablate).")
    const_weight: float = option(1.0, "Weight of L_const: g.z_v(x) matches z_v(T_g x) (0: ablate).")
    ctf: bool = ctf_option()

    def __post_init__(self):
        if self.ctf and self.group == "SO3":
            raise ValueError("volumes carry no CTF: --group SO3 takes --no-ctf")


def _stack(conv, channels: list[int], last_activation: bool) -> nn.Sequential:
    """Stride-2 4x4(x4) convolutions (or transposed ones) through ``channels``, LeakyReLU(0.2) between."""
    layers = []
    for k, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        layers.append(conv(c_in, c_out, 4, stride=2, padding=1))
        if last_activation or k < len(channels) - 2:
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


def _channel_mean(x: torch.Tensor) -> torch.Tensor:
    """(C,) mean over every axis of (N, C, ...) but the channel axis."""
    return x.transpose(0, 1).flatten(1).mean(1)


class MaskedGroupAction(Model, GroupAction):
    """Encoder-decoder with a learned binary channel mask on which SO(2) or SO(3) acts (see the module doc)."""

    name = "masked"
    Config = MaskedConfig

    @classmethod
    def data_ndim(cls, options: dict) -> int:
        return 3 if options.get("group") == "SO3" else 2

    def __init__(self, config: MaskedConfig, box: int):
        super().__init__(config, box)
        for name, allowed in [("group", ("SO2", "SO3")), ("action", ("spatial", "vector")),
                              ("output", ("linear", "tanh"))]:
            if getattr(config, name) not in allowed:
                raise ValueError(f"--{name} must be one of {', '.join(allowed)}, not {getattr(config, name)!r}")
        if config.latent_channels < 1 or config.width < 1 or config.stages < 0 or config.frequencies < 1:
            raise ValueError("--latent-channels, --width and --frequencies must be >= 1, --stages >= 0")
        d = self.ndim
        stages = config.stages or max(1, math.ceil(math.log2(box / LATENT_SIDE)))
        self.side = -(-box // 2 ** stages)  # latent grid side; the input is zero-padded to side * 2^stages
        self.pad = self.side * 2 ** stages - box
        widths = [config.width * 2 ** k for k in range(stages)]
        conv, up = (nn.Conv2d, nn.ConvTranspose2d) if d == 2 else (nn.Conv3d, nn.ConvTranspose3d)
        if config.action == "spatial":
            self.latent_shape = (config.latent_channels, *(self.side,) * d)
            self.encoder = _stack(conv, [1, *widths[:-1], config.latent_channels], last_activation=False)
            self.decoder = _stack(up, [config.latent_channels, *widths[-2::-1], 1], last_activation=False)
        else:
            self.latent_shape = (config.latent_channels, d)
            features = widths[-1] * self.side ** d
            self.encoder = nn.Sequential(_stack(conv, [1, *widths], True), nn.Flatten(),
                                         nn.Linear(features, config.latent_channels * d),
                                         nn.BatchNorm1d(config.latent_channels * d, affine=False))
            self.decoder = nn.Sequential(nn.Linear(config.latent_channels * d, features), nn.LeakyReLU(0.2),
                                         nn.Unflatten(1, (widths[-1], *(self.side,) * d)),
                                         _stack(up, [*widths[::-1], 1], False))
        # every channel starts acted on (sigmoid(alpha) just above 1/2); the losses decide which turn invariant
        self.alpha = nn.Parameter(torch.full((config.latent_channels,), 0.01)) if config.mask else None
        self.register_buffer("frequency", 1.0 + torch.arange(config.latent_channels) % config.frequencies,
                             persistent=False)
        self.register_buffer("support", ball_mask(box, d), persistent=False)
        # the spatial latent grid keeps its inscribed disc/ball (about its geometric centre): what g turns out of it
        disc = ball_mask(self.side, d, centre=(self.side - 1) / 2)
        self.register_buffer("latent_support", disc if config.action == "spatial" else torch.ones(()),
                             persistent=False)

    # --- the mask and the action ---------------------------------------------------------------------------

    def channel_mask(self) -> torch.Tensor:
        """(C,) binary mask, 1 = acted on (z_v); forward exactly 1[sigmoid(alpha) > 0.5], gradient of sigmoid."""
        if self.alpha is None:
            return self.support.new_ones(self.config.latent_channels)
        soft = torch.sigmoid(self.alpha)
        return (soft > 0.5).to(soft.dtype) + (soft - soft.detach())

    def _split(self, z: torch.Tensor, m: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_v, z_i) of a latent (N, C, ...) by the channel mask ``m`` (default: the current one)."""
        m = (self.channel_mask() if m is None else m).view(-1, *(1,) * (z.dim() - 2))
        return m * z, (1 - m) * z

    def sample_group(self, n: int, device=None, between: tuple[float, float] | None = None,
                     generator=None) -> torch.Tensor:
        """n group elements whose rotation angle lies in ``between`` = (low, high) degrees (default: (0,
        max_angle), the training transformations): angles (n,) rad of either sign, uniform in magnitude (SO2), or
        rotations (n, 3, 3), Haar-distributed within the range (SO3); drawn with ``generator`` (default: torch's)."""
        low, high = (math.radians(a) for a in (between or (0.0, self.config.max_angle)))
        if self.ndim == 2:
            u = 2 * torch.rand(n, device=device, generator=generator) - 1  # the sign and the magnitude at once
            return torch.sign(u) * (low + (high - low) * u.abs())
        return random_rotations(n, high, generator, device, min_angle=low)

    def turns(self, angles: torch.Tensor) -> torch.Tensor:
        """Group elements for turns by ``angles`` (N,) rad: the angles (SO2), or the rotations about y (SO3)."""
        if self.ndim == 2:
            return angles
        half = angles / 2  # the quaternions (cos a/2, 0, sin a/2, 0)
        zero = torch.zeros_like(half)
        return quaternion_to_matrix(torch.stack([half.cos(), zero, half.sin(), zero], -1))

    def transform(self, data: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """T_g of images (N, D, D) (angles g (N,) rad) or volumes (N, D, D, D) (matrices g (N, 3, 3)), masked
        before and after turning."""
        data = data * self.support
        out = resample_images(data, g) if self.ndim == 2 else rotate_volumes(data, g.transpose(1, 2), mask=False)
        return out * self.support

    def _act(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """g.z for a latent (N, C, ...) -- the same group action as :meth:`transform`."""
        if self.config.action == "vector":
            if self.ndim == 2:  # rho(theta) = R(f theta)^T, per vector
                rho = rotation_matrix((g[:, None] * self.frequency).reshape(-1)).view(len(z), -1, 2, 2)
                return (z[..., None, :] @ rho)[..., 0, :]
            return z @ g.transpose(1, 2)  # rho(A) = A on row vectors
        # spatial: out(p) = z(S p) about the grid centre, S = R(theta) (2-D) or A^T (3-D), like T_g
        sample = rotation_matrix(g) if self.ndim == 2 else g.transpose(1, 2)
        affine = torch.cat([sample, sample.new_zeros(len(z), self.ndim, 1)], -1)
        grid = F.affine_grid(affine, list(z.shape), align_corners=False)
        return F.grid_sample(z, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # --- encoder and decoder ------------------------------------------------------------------------------

    def _encode(self, data: torch.Tensor) -> torch.Tensor:
        """Latent (N, C, ...) of masked data (N, D, D[, D])."""
        lo = self.pad // 2
        x = F.pad(data[:, None], (lo, self.pad - lo) * self.ndim)
        z = self.encoder(x).view(len(data), *self.latent_shape) * self.latent_support
        return z * torch.rsqrt(z.square().mean(tuple(range(1, z.dim())), keepdim=True) + 1e-8)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z.flatten(1) if self.config.action == "vector" else z)[:, 0]
        lo = self.pad // 2
        out = out[(..., *(slice(lo, lo + self.box),) * self.ndim)]
        return (torch.tanh(out) if self.config.output == "tanh" else out) * self.support

    def loss(self, batch):
        x = batch["images"] * self.support
        g = self.sample_group(len(x), x.device)
        gx = self.transform(x, g)
        z, gz = self._encode(x), self._encode(gx).detach()
        m = self.channel_mask()
        z_v, z_i = self._split(z, m)
        acted = self._act(z_v, g)
        # for a binary mask these equal |z_i - sg z_i(T_g x)|^2 and |g.z_v - sg z_v(T_g x)|^2 (means over every
        # latent element); written linear in M, the straight-through gradient of channel c is the difference
        # between its cost as variant and as invariant
        inv = _channel_mean((z - gz).square())
        const = _channel_mean((self._act(z, g) - gz).square())
        decoded, decoded_g = self._decode(z), self._decode(acted + z_i)
        if self.uses_ctf:  # D draws the particle before the microscope; T_g x carries the CTF turned with it
            turned = rotate_ctf_parameters(batch["ctf_parameters"], g)
            decoded = self.observed(decoded, batch) * self.support
            decoded_g = apply_ctf(decoded_g, ctf_rfft(self.box, turned)) * self.support
        terms = {"recon": F.mse_loss(decoded, x), "transform": F.mse_loss(decoded_g, gx),
                 "inv": ((1 - m) * inv).mean(), "const": (m * const).mean()}
        c = self.config
        total = (c.recon_weight * terms["recon"] + c.transform_weight * terms["transform"]
                 + c.inv_weight * terms["inv"] + c.const_weight * terms["const"])
        return {"loss": total, **terms, "variant": self.channel_mask().detach().mean()}

    # --- the interface and the helpers for analysis -------------------------------------------------------

    def encode(self, images, ctf_parameters=None):
        """``z`` (N, k) the flattened latent (k = C * h * w[* l], or C * 2|3 for the vector action), ``z_std``
        zeros (deterministic), ``mask`` (N, C) the channel mask (1 = acted on; the same for every row), and the
        flattened ``z_v``, ``z_i``."""
        z = self._encode(images * self.support)
        z_v, z_i = self._split(z)
        mask = self.channel_mask().detach().expand(len(z), -1)
        return {"z": z.flatten(1), "z_std": torch.zeros_like(z.flatten(1)), "mask": mask, "z_v": z_v.flatten(1),
                "z_i": z_i.flatten(1)}

    def act(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Phi_g(z) = g.z_v + z_i for flattened latents (N, k) and group elements g (angles (N,) rad or
        matrices (N, 3, 3)); (N, k)."""
        z_v, z_i = self._split(z.view(len(z), *self.latent_shape))
        return (self._act(z_v, g) + z_i).flatten(1)

    def swap(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """Flattened latents (N, k) with z_v of ``z_a`` and z_i of ``z_b``."""
        m = self.channel_mask().detach().view(-1, *(1,) * (len(self.latent_shape) - 1))
        shape = (-1, *self.latent_shape)
        return (m * z_a.view(shape) + (1 - m) * z_b.view(shape)).flatten(1)

    def decode(self, latent):
        """Images (N, D, D) or volumes (N, D, D, D) from ``latent["z"]`` (N, k); a ``theta`` (N,) rad (SO2) or
        ``rotation`` (N, 3, 3) (SO3, RELION's A) entry acts on z_v first: the prediction of T_g x."""
        z = latent["z"]
        g = latent.get("theta" if self.ndim == 2 else "rotation")
        if g is not None:
            z = self.act(z, g)
        return self._decode(z.view(len(z), *self.latent_shape))

    def predict(self, data: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The model's T_g x: D(Phi_g(E(x))) for data (N, D, D[, D]) and group elements g."""
        return self._decode(self.act(self.encode(data)["z"], g).view(len(data), *self.latent_shape))
