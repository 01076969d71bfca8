"""spatial-VAE (Bepler, Zhong, Kelley, Brignole & Berger, NeurIPS 2019).

An MLP encoder on the flattened image infers Gaussian posteriors q(z), q(theta) and q(shift); the generator
(:class:`~emgroup.models.generator.CoordinateGenerator`, linear coordinate branch, tanh) draws every pixel from
its transformed coordinate ``R(theta) x + shift`` and z, so rotation and translation are explicit and z holds the
content. Pose convention: ``image(x) = canonical(R(theta) x + shift)``, theta in radians, shift in pixels (x, y)
(:mod:`emgroup.models.grids`).

Priors: z ~ N(0, I); shift ~ N(0, shift_sigma^2) per axis (the encoder predicts the shift in units of
shift_sigma); theta ~ N(0, sigma^2) (``normal:SIGMA_DEG``) or, for ``uniform``, the paper's KL without the mean
term (eq. 3) against a width of pi. The Gaussian likelihood learns one noise sigma for all pixels.
"""

import math
from dataclasses import dataclass

import torch

from emgroup.geometry import parse_angle_distribution, wrap_angle
from emgroup.models import losses
from emgroup.models.base import Model, Pose, option
from emgroup.models.generator import CoordinateGenerator
from emgroup.models.grids import coordinate_grid, resample_images, transform_grid
from emgroup.models.mlp import MLPConfig, mlp, noise_log_sigma, sample_gaussian
from emgroup.models.pose_search import search_inplane_pose

#: width (radians) of the angle term of the modified KL when the angle has no prior mean (the paper's default)
UNIFORM_THETA_WIDTH = math.pi


def parse_theta_prior(spec: str) -> float | None:
    """'uniform' -> None (no prior mean: eq. 3); 'normal:SIGMA_DEG' -> sigma in radians. ValueError otherwise."""
    kind, sigma = parse_angle_distribution(spec, "--theta-prior")
    return None if kind == "uniform" else math.radians(sigma)


@dataclass
class SpatialVAEConfig(MLPConfig):
    # 256, not the paper's 500: on the cryo-EM yardstick as good at SNR 0.3, better at SNR 0.1 (states separated in
    # 12 epochs where 500 did not), at 2.6x less cost per epoch (docs/models-spatial.md)
    hidden: int = option(256, "Width of the hidden layers (units).")
    rotation: bool = option(True, "Infer an in-plane rotation per particle.")
    translation: bool = option(True, "Infer an in-plane translation per particle.")
    theta_prior: str = option("uniform", "Prior on the in-plane angle: 'uniform' (spatial-VAE's KL without a prior "
                              "mean, eq. 3) or 'normal:SIGMA_DEG' (N(0, SIGMA^2), SIGMA in degrees).")
    shift_sigma: float = option(2.0, "Std of the Gaussian prior on the translation, pixels per axis.")
    augment_rotation: bool = option(False, "Rotate each encoder input by a random angle in [-180, 180) degrees "
                                    "(batched, on the device) and subtract it from the predicted angle.")
    freeze_z_epochs: int = option(0, "Number of first epochs with z held at 0 (the pose is learned first).")
    pose_search: int = option(64, "Infer each particle's pose by exhaustive search: the best of this many in-plane "
                              "angles x every whole-pixel shift within 3 --shift-sigma of the decoded image, scored "
                              "by the likelihood with the CTF and the priors (the encoder then infers z only); 0: "
                              "the paper's pose from the encoder, q(theta) and q(t).")


class SpatialVAE(Model):
    name = "spatial"
    Config = SpatialVAEConfig

    def __init__(self, config: SpatialVAEConfig, box: int):
        super().__init__(config, box)
        self.theta_prior = parse_theta_prior(config.theta_prior)
        # means and log-stds of the pose, when the encoder infers it
        n_pose = 0 if config.pose_search else 2 * (int(config.rotation) + 2 * int(config.translation))
        self.encoder = mlp(box * box, config.hidden, config.layers, 2 * config.z_dim + n_pose)
        self.generator = CoordinateGenerator(config.z_dim, config.hidden, config.layers, "tanh")
        self.log_sigma = noise_log_sigma(config.likelihood)
        self.register_buffer("grid", coordinate_grid(box), persistent=False)
        self.z_frozen = False

    @property
    def pose(self) -> Pose:
        """In-plane when the model infers a rotation or a shift (``--rotation``, ``--translation``)."""
        return Pose.IN_PLANE if self.config.rotation or self.config.translation else Pose.NONE

    def on_epoch_start(self, epoch):
        self.z_frozen = epoch < self.config.freeze_z_epochs

    def _posterior(self, images):
        """(mean, log-std) of z (N, k), theta (N,) rad and shift (N, 2) px; None for a pose the encoder does not
        infer (not inferred, or searched)."""
        out = self.encoder(images.flatten(1))
        k = self.config.z_dim
        post = {"z": (out[:, :k], out[:, k:2 * k]), "theta": None, "shift": None}
        rest = out[:, 2 * k:]
        if self.config.pose_search:
            return post
        if self.config.rotation:
            post["theta"], rest = (rest[:, 0], rest[:, 1]), rest[:, 2:]
        if self.config.translation:  # predicted in prior-std units, reported in pixels
            sigma = self.config.shift_sigma
            post["shift"] = (rest[:, :2] * sigma, rest[:, 2:4] + math.log(sigma))
        return post

    def _render(self, z, theta=None, shift=None):
        """Generator output (logits or means) (N, D, D) in the pose (theta, shift); canonical where None."""
        n = z.shape[0]
        coords = (self.grid.expand(n, *self.grid.shape) if theta is None and shift is None
                  else transform_grid(self.grid, theta, shift))
        return self.generator(coords, z).view(n, self.box, self.box)

    def _search_pose(self, z, images, ctf_parameters):
        """(theta (N,) rad, shift (N, 2) px) of ``images`` by :func:`search_inplane_pose` on the canonical images
        the generator draws at ``z``; theta 0 without --rotation, shift 0 without --translation."""
        c = self.config
        with torch.no_grad():
            canonical = self._render(z)
        prior = None if self.theta_prior is None else lambda t: -0.5 * (wrap_angle(t) / self.theta_prior) ** 2
        return search_inplane_pose(canonical, images, c.likelihood, self.log_sigma,
                                   ctf_parameters if self.uses_ctf else None, c.pose_search if c.rotation else 1,
                                   prior, c.shift_sigma if c.translation else None, 3 * c.shift_sigma)

    def loss(self, batch):
        images = batch["images"]
        gamma = None
        if self.config.augment_rotation and (self.config.rotation or self.config.pose_search) and self.training:
            gamma = (torch.rand(images.shape[0], device=images.device) * 2 - 1) * math.pi
        # rotating the input by gamma turns a particle of pose (theta, t) into one of pose (theta + gamma, t); with
        # the pose searched, it teaches the z encoder that z does not depend on the angle
        seen = self.encoder_input(images, batch.get("ctf_parameters"))
        post = self._posterior(seen if gamma is None else resample_images(seen, gamma))
        mu, logstd = post["z"]
        z = torch.zeros_like(mu) if self.z_frozen else sample_gaussian(mu, logstd)
        kl = {"kl_z": torch.zeros_like(mu).sum(1) if self.z_frozen else losses.gaussian_kl(mu, logstd).sum(1)}
        theta = shift = None
        if self.config.pose_search:
            theta, shift = self._search_pose(z, images, batch.get("ctf_parameters"))
        if post["theta"] is not None:
            mu, logstd = post["theta"]
            mu = mu if gamma is None else mu - gamma
            theta = sample_gaussian(mu, logstd)
            kl["kl_theta"] = (losses.angle_kl_without_mean(logstd, UNIFORM_THETA_WIDTH) if self.theta_prior is None
                              else losses.gaussian_kl(mu, logstd, 0.0, self.theta_prior))
        if post["shift"] is not None:
            mu, logstd = post["shift"]
            shift = sample_gaussian(mu, logstd)
            kl["kl_shift"] = losses.gaussian_kl(mu, logstd, 0.0, self.config.shift_sigma).sum(1)
        output = self._render(z, theta, shift)
        if self.config.pose_search and self.config.translation and self.training:
            self.generator.follow_centroid(losses.mean_image(self.config.likelihood, output), theta, shift)
        recon = losses.image_nll(self.config.likelihood, self.observed(output, batch), images, self.log_sigma)
        terms = {"recon": recon.mean(), "kl": sum(kl.values()).mean(), **{k: v.mean() for k, v in kl.items()}}
        return {"loss": terms["recon"] + terms["kl"], **terms}

    def encode(self, images, ctf_parameters=None):
        """Posterior means and stds: z, z_std (N, k); theta, theta_std (N,) rad (theta wrapped to [-pi, pi));
        shift, shift_std (N, 2) px (x, y) — the pose entries only when inferred. With --pose-search, theta and
        shift are the searched pose (no std) at the mean z, seen through the CTF of ``ctf_parameters``."""
        post = self._posterior(self.encoder_input(images, ctf_parameters))
        latent = {}
        for name, value in post.items():
            if value is not None:
                latent[name], latent[f"{name}_std"] = value[0], torch.exp(value[1])
        if self.config.pose_search:
            theta, shift = self._search_pose(latent["z"], images, ctf_parameters)
            latent |= ({"theta": theta} if self.config.rotation else {}) | (
                {"shift": shift} if self.config.translation else {})
        if "theta" in latent:
            latent["theta"] = wrap_angle(latent["theta"])
        return latent

    def decode(self, latent):
        """Expected images (N, D, D) at ``z`` in the pose ``theta``/``shift`` (canonical where absent)."""
        output = self._render(latent["z"], latent.get("theta"), latent.get("shift"))
        return losses.mean_image(self.config.likelihood, output)
