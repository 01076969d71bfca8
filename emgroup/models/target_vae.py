"""TARGET-VAE (Nasiri & Bepler, 2022): a P_r-equivariant encoder with attention over translation x rotation.

Encoder: a lifting convolution over P_r (kernels at least the object's size) and a 1x1 group convolution, leaky
ReLU, then a pointwise head giving, for every cell (t, r) of the translation grid x the r group rotations, the
attention logit a(t, r) -> q(t, r) = softmax, and Gaussians of the fine angle theta = alpha_r + dtheta, of z, and
(beyond the paper) of a sub-pixel offset of the object's position. The generator is
:class:`~emgroup.models.generator.CoordinateGenerator` with random Fourier features of ``R(theta) x + shift``.

Cell (t, r) places the object's centre at image position ``y = grid(t) + R(-alpha_r) delta`` (pixels from the
centre D // 2); in the pose convention ``image(x) = canonical(R(theta) x + shift)`` that is ``shift = -R(theta) y``.
The fine offset delta is predicted in the frame of rotation r, which keeps the encoder equivariant.

KL = KL(q(t, r) || p(t, r)) + sum_{t,r} q(t, r) (KL_theta + KL_z + KL_delta), with p(t, r) a softmax over the
cells of log N(grid(t); 0, shift_sigma^2) + log p(r) (uniform, or a normal at the wrapped group angles; log p(r) is
also added to the attention logits, as in the public code), p(theta | r) = N(alpha_r, (pi / r)^2), p(z) = N(0, I),
p(delta) = N(0, SUBPIXEL_SIGMA^2). Training decodes a Gumbel-softmax sample of (t, r) per image: the paper's soft
weights (the cells' Gaussians averaged with them) or one cell (``--gumbel hard``); ``encode`` reports the most
probable cell. With the CTF, the encoder sees phase-flipped images; the generator keeps the object's centroid at
the frame's origin (:meth:`~emgroup.models.generator.CoordinateGenerator.follow_centroid`).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from emgroup.geometry import parse_angle_distribution, wrap_angle
from emgroup.models import losses
from emgroup.models.base import Model, Pose, check_ctf_likelihood, ctf_option, option
from emgroup.models.chunking import chunked
from emgroup.models.generator import CoordinateGenerator
from emgroup.models.grids import coordinate_grid, pixel_size, rotation_matrix, transform_grid
from emgroup.models.groupconv import GroupConv1x1, LiftingConv
from emgroup.models.mlp import noise_log_sigma, sample_gaussian

GROUPS = {"P4": 4, "P8": 8, "P16": 16}
#: prior std (pixels, per axis) of the sub-pixel offset of the object's position within a translation cell
SUBPIXEL_SIGMA = 0.5
#: kernel and padding as fractions of the box when not given: the paper's 28 px and 8 px for 50 px MNIST
KERNEL_FRACTION, PADDING_FRACTION = 0.56, 0.16
#: fp32 maps of (cells, rotations, channels) per image that the encoder keeps for backward: the lifted, mixed and
#: activated maps and the head's input
ENCODER_MAPS = 4


@dataclass
class TargetVAEConfig:
    z_dim: int = option(2, "Latent dimensions (content; for spatial/target: besides the pose).")
    group: str = option("P8", "Rotation group of the TARGET-VAE encoder: P4, P8 or P16 (r rotations by multiples "
                        "of 360/r degrees).", choices=tuple(GROUPS))
    kernel_size: int = option(0, "Side of the lifting-convolution kernels, px; at least the object's size "
                              f"(0: {KERNEL_FRACTION} x box, the paper's 28 px for 50 px MNIST).")
    padding: int = option(-1, "Zero padding of the encoder input per side, px; the translation grid has box + "
                          f"2 padding - kernel + 1 positions per axis (-1: {PADDING_FRACTION} x box, the paper's 8 px "
                          "for 50 px MNIST).")
    channels: int = option(128, "Channels per rotation of the encoder's group convolutions.")
    group_kernel: int = option(1, "Rotations (odd) each 1x1 group convolution mixes (1: the paper's pointwise 3-D "
                               "convolution).")
    hidden: int = option(512, "Width of the hidden layers (units).")
    generator_layers: int = option(2, "Hidden layers of the generator (the paper: 2 for MNIST, 6 for cryo-EM).")
    fourier_features: int = option(1024, "Random Fourier features cos(W x / sigma + b) of the generator's "
                                   "coordinates (sigma = one pixel).")
    likelihood: str = option("gaussian", "Pixel likelihood: 'gaussian' (normalized cryo-EM images; one learned "
                             "noise sigma, in image units) or 'bernoulli' (images in [0, 1], e.g. MNIST).",
                             choices=("gaussian", "bernoulli"))
    rotation_prior: str = option("uniform", "Prior over the group rotations: 'uniform' or 'normal:SIGMA_DEG' (a "
                                 "normal of SIGMA degrees at the group angles, discretized).")
    shift_sigma: float = option(2.5, "Std of the Gaussian prior on the translation, pixels per axis.")
    subpixel: bool = option(True, "Infer a sub-pixel offset of the position in each translation cell (beyond the "
                            "paper, whose translations are on the pixel grid).")
    temperature: float = option(1.0, "Temperature of the Gumbel-softmax sample of (translation, rotation) in "
                                "training.")
    freeze_z_epochs: int = option(0, "Number of first epochs with z held at 0 (the pose is learned first).")
    gumbel: str = option("soft", "How training draws the cell (translation, rotation): 'soft' (the paper's "
                         "Gumbel-softmax weights; the cells' poses and z averaged with them) or 'hard' (one cell, "
                         "straight-through gradient).", choices=("soft", "hard"))
    ctf: bool = ctf_option()

    def __post_init__(self):
        check_ctf_likelihood(self.ctf, self.likelihood)


def rotation_log_prior(spec: str, angles: torch.Tensor) -> torch.Tensor:
    """Unnormalized log p(r) at the group angles (r,) rad for 'uniform' or 'normal:SIGMA_DEG'."""
    kind, sigma = parse_angle_distribution(spec, "--rotation-prior")
    return torch.zeros_like(angles) if kind == "uniform" else -0.5 * (wrap_angle(angles) / math.radians(sigma)) ** 2


class TargetVAE(Model):
    name = "target"
    Config = TargetVAEConfig
    pose = Pose.IN_PLANE

    def __init__(self, config: TargetVAEConfig, box: int):
        super().__init__(config, box)
        if config.group not in GROUPS:
            raise ValueError(f"--group must be one of {', '.join(GROUPS)}, not {config.group!r}")
        r, c, k = GROUPS[config.group], config.channels, config.z_dim
        kernel = config.kernel_size or round(KERNEL_FRACTION * box)
        padding = config.padding if config.padding >= 0 else round(PADDING_FRACTION * box)
        cells = box + 2 * padding - kernel + 1
        if cells < 1:
            raise ValueError(f"--kernel-size {kernel} px is larger than the {box} px box plus twice the padding")
        self.lift = LiftingConv(1, c, kernel, padding, r)
        self.mix = GroupConv1x1(c, c, config.group_kernel)
        # per cell: attention logit, dtheta (mean, log-std), z (means, log-stds), delta (x, y, one log-std)
        self.head = GroupConv1x1(c, 3 + 2 * k + 3 * config.subpixel)
        self.generator = CoordinateGenerator(k, config.hidden, config.generator_layers, "leaky_relu",
                                             config.fourier_features, pixel_size(box))
        self.log_sigma = noise_log_sigma(config.likelihood)
        self.z_frozen = False
        angles = torch.arange(r) * (2 * math.pi / r)
        # object position (px from the image centre D // 2) of each translation cell: the kernel's array centre
        axis = torch.arange(cells) - padding + (kernel - 1) / 2 - box // 2
        y, x = torch.meshgrid(axis, axis, indexing="ij")
        positions = torch.stack([x, y], -1)  # (H, W, 2) x, y
        log_p_r = rotation_log_prior(config.rotation_prior, angles)
        log_prior = -0.5 * (positions / config.shift_sigma).pow(2).sum(-1)[..., None] + log_p_r
        for name, value in {"angles": angles, "positions": positions, "grid": coordinate_grid(box), "log_p_r": log_p_r,
                            "log_prior": torch.log_softmax(log_prior.flatten(), 0)}.items():
            self.register_buffer(name, value, persistent=False)

    def on_epoch_start(self, epoch):
        self.z_frozen = epoch < self.config.freeze_z_epochs

    def _posterior(self, images):
        """Per cell (N, H, W, r): ``logits``; ``theta`` (mean, log-std) rad; ``z`` (means, log-stds) (..., k);
        ``position`` (mean (..., 2) px, log-std (...,)) of the object's centre, log-std None without sub-pixel."""
        cells = len(self.positions)
        item_bytes = cells**2 * len(self.angles) * self.config.channels * 4 * ENCODER_MAPS
        lift = self.lift.operator(self.box, images.device.type)
        out = chunked(lambda chunk: self._cells(chunk, lift), images, item_bytes=item_bytes)
        k = self.config.z_dim
        # log p(r) added to the attention logits, as the public code does (q(r) starts at the prior)
        post = {"logits": out[..., 0] + self.log_p_r, "theta": (out[..., 1] + self.angles, out[..., 2]),
                "z": (out[..., 3:3 + k], out[..., 3 + k:3 + 2 * k])}
        position = self.positions[:, :, None].expand(*out.shape[1:-1], 2)
        if self.config.subpixel:  # delta in the frame of rotation r: R(-alpha_r) delta in the image
            delta = torch.einsum("rij,nhwrj->nhwri", rotation_matrix(-self.angles), out[..., 3 + 2 * k:5 + 2 * k])
            post["position"] = (position + delta, out[..., 5 + 2 * k])
        else:
            post["position"] = (position.expand_as(out[..., :2]), None)
        return post

    def _cells(self, images, lift):
        """The head's outputs per cell, (N, H, W, r, 3 + 2 k + 3 subpixel), for images (N, D, D) and the lifting
        convolution ``lift`` (:meth:`~emgroup.models.groupconv.LiftingConv.operator`)."""
        h = F.leaky_relu(self.mix(F.leaky_relu(lift(images[:, None]), 0.2)), 0.2)
        with torch.autocast(images.device.type, enabled=False):  # bf16 would round logits of ~20 to steps of 0.1
            return self.head(h.float())

    def kl(self, post) -> dict[str, torch.Tensor]:
        """Per-image KL terms (N,): ``kl_tr`` of q(t, r) and the q-weighted ``kl_theta``, ``kl_z``, ``kl_shift``."""
        log_q = torch.log_softmax(post["logits"].flatten(1), 1)
        q = log_q.exp()
        r = len(self.angles)
        kl = {"kl_tr": (q * (log_q - self.log_prior)).sum(1)}
        mu, logstd = post["theta"]
        kl_z = losses.gaussian_kl(*post["z"]).sum(-1)
        cells = {"kl_theta": losses.gaussian_kl(mu, logstd, self.angles, math.pi / r),
                 "kl_z": torch.zeros_like(kl_z) if self.z_frozen else kl_z}
        mu, logstd = post["position"]
        if logstd is not None:
            delta = mu - self.positions[:, :, None]
            cells["kl_shift"] = losses.gaussian_kl(delta, logstd[..., None], 0.0, SUBPIXEL_SIGMA).sum(-1)
        return kl | {name: (q * value.flatten(1)).sum(1) for name, value in cells.items()}

    @staticmethod
    def _select(post, weights):
        """Each per-cell Gaussian of ``post`` averaged with ``weights`` (N, cells) (one-hot: the chosen cell's)."""
        def pick(value):
            return None if value is None else torch.einsum("nc,nc...->n...", weights, value.flatten(1, 3))
        return {name: tuple(map(pick, value)) for name, value in post.items() if name != "logits"}

    def _render(self, z, theta, shift=None):
        """Generator output (N, D, D) in the pose theta (N,) rad, shift (N, 2) px."""
        return self.generator(transform_grid(self.grid, theta, shift), z).view(-1, self.box, self.box)

    def loss(self, batch):
        images = batch["images"]
        post = self._posterior(self.encoder_input(images, batch.get("ctf_parameters")))
        weights = F.gumbel_softmax(post["logits"].flatten(1), tau=self.config.temperature,
                                   hard=self.config.gumbel == "hard")
        chosen = self._select(post, weights)
        theta, z = sample_gaussian(*chosen["theta"]), sample_gaussian(*chosen["z"])
        z = torch.zeros_like(z) if self.z_frozen else z
        mu, logstd = chosen["position"]
        position = mu if logstd is None else sample_gaussian(mu, logstd[:, None].expand_as(mu))
        shift = -(rotation_matrix(theta) @ position[..., None])[..., 0]
        output = self._render(z, theta, shift)
        if self.training:
            self.generator.follow_centroid(losses.mean_image(self.config.likelihood, output), theta, shift)
        recon = losses.image_nll(self.config.likelihood, self.observed(output, batch), images, self.log_sigma)
        kl = self.kl(post)
        terms = {"recon": recon.mean(), "kl": sum(kl.values()).mean(), **{k: v.mean() for k, v in kl.items()}}
        return {"loss": terms["recon"] + terms["kl"], **terms}

    def encode(self, images, ctf_parameters=None):
        """At the most probable cell (t, r): ``z``, ``z_std`` (N, k); ``theta``, ``theta_std`` (N,) rad (theta in
        [-pi, pi)); ``shift`` (N, 2) px (x, y). Also ``q_tr`` (N, r, H, W), the posterior over the cells."""
        post = self._posterior(self.encoder_input(images, ctf_parameters))
        logits = post["logits"].flatten(1)
        chosen = self._select(post, F.one_hot(logits.argmax(1), logits.shape[1]).to(logits.dtype))
        theta = chosen["theta"][0]
        shift = -(rotation_matrix(theta) @ chosen["position"][0][..., None])[..., 0]
        return {"z": chosen["z"][0], "z_std": chosen["z"][1].exp(), "theta": wrap_angle(theta),
                "theta_std": chosen["theta"][1].exp(), "shift": shift,
                "q_tr": torch.softmax(logits, 1).view_as(post["logits"]).permute(0, 3, 1, 2)}

    def decode(self, latent):
        """Expected images (N, D, D) at ``z`` in the pose ``theta``/``shift`` (canonical where absent)."""
        z = latent["z"]
        output = self._render(z, latent.get("theta", z.new_zeros(len(z))), latent.get("shift"))
        return losses.mean_image(self.config.likelihood, output)
