"""Coordinate generator shared by spatial-VAE and TARGET-VAE: one pixel value from (x', z).

spatial-VAE (Bepler et al. 2019): x' enters through a linear layer; TARGET-VAE (Nasiri & Bepler 2022): through
random Fourier features ``cos(W x' / sigma + b)``, W ~ N(0, 1), b ~ U(0, 2 pi), sigma = one pixel. In both, the
z branch is a separate linear layer whose output is added to the coordinate branch, then shared hidden layers.
"""

import math

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "leaky_relu": lambda: nn.LeakyReLU(0.2)}


class FourierFeatures(nn.Module):
    """Fixed random features ``cos(W x / sigma + b)`` of 2-D coordinates: (..., 2) -> (..., n_features).

    The phase is computed in fp32 even under autocast: it spans tens of radians, where bf16 would be off by ~0.3.
    """

    def __init__(self, n_features: int, sigma: float, in_dim: int = 2):
        super().__init__()
        self.register_buffer("weight", torch.randn(in_dim, n_features) / sigma)
        self.register_buffer("bias", torch.rand(n_features) * 2 * math.pi)

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return torch.cos(x.float() @ self.weight + self.bias)


class CoordinateGenerator(nn.Module):
    """f(x', z): (N, P, 2) transformed coordinates and (N, k) latents -> (N, P) pixel values (logits/means).

    ``layers`` counts the hidden layers (the first is the sum of the coordinate and z branches).
    ``fourier_features`` = 0 uses a linear coordinate branch (spatial-VAE), > 0 random Fourier features with
    ``fourier_sigma`` in normalized units (TARGET-VAE uses one pixel, 2 / D).
    """

    def __init__(self, z_dim: int, hidden: int = 512, layers: int = 2, activation: str = "tanh",
                 fourier_features: int = 0, fourier_sigma: float = 0.04):
        super().__init__()
        if fourier_features:
            self.coords = nn.Sequential(FourierFeatures(fourier_features, fourier_sigma),
                                        nn.Linear(fourier_features, hidden))
        else:
            self.coords = nn.Linear(2, hidden)
        self.latent = nn.Linear(z_dim, hidden, bias=False) if z_dim > 0 else None
        act = ACTIVATIONS[activation]
        body = [act()]
        for _ in range(layers - 1):
            body += [nn.Linear(hidden, hidden), act()]
        self.body = nn.Sequential(*body, nn.Linear(hidden, 1))

    def forward(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        h = self.coords(coords)
        if self.latent is not None:
            h = h + self.latent(z)[:, None, :]
        return self.body(h).squeeze(-1)
