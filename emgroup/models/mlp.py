"""Building blocks shared by the MLP models (spatial-VAE and the VAE baselines)."""

from dataclasses import dataclass

import torch
from torch import nn

from emgroup.models.base import check_ctf_likelihood, ctf_option, option


@dataclass
class MLPConfig:
    """Options common to the MLP models."""

    z_dim: int = option(2, "Latent dimensions (content; for spatial/target: besides the pose).")
    hidden: int = option(500, "Width of the hidden layers (units).")
    layers: int = option(2, "Hidden layers in the encoder (and in the decoder/generator).")
    likelihood: str = option("gaussian", "Pixel likelihood: 'gaussian' (normalized cryo-EM images; one learned "
                             "noise sigma, in image units) or 'bernoulli' (images in [0, 1], e.g. MNIST).",
                             choices=("gaussian", "bernoulli"))
    ctf: bool = ctf_option()

    def __post_init__(self):
        check_ctf_likelihood(self.ctf, self.likelihood)


def mlp(n_in: int, hidden: int, layers: int, n_out: int, activation=nn.Tanh) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` with ``activation``, then a linear output layer."""
    blocks, width = [], n_in
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), activation()]
        width = hidden
    return nn.Sequential(*blocks, nn.Linear(width, n_out))


def sample_gaussian(mu: torch.Tensor, logstd: torch.Tensor) -> torch.Tensor:
    """Reparameterised sample of N(mu, exp(logstd)^2)."""
    return mu + torch.exp(logstd) * torch.randn_like(mu)


def noise_log_sigma(likelihood: str) -> nn.Parameter | None:
    """The learned log noise sigma of a Gaussian pixel likelihood (starts at sigma = 1, the scale of normalized
    images); None for Bernoulli."""
    return nn.Parameter(torch.zeros(())) if likelihood == "gaussian" else None
