"""VAE / beta-VAE baselines: shapes, the beta weighting, the parameter budget, and a short training."""

import math

import pytest
import torch

from emgroup.analysis.metrics import pearson
from emgroup.models import build_model
from emgroup.models.grids import coordinate_grid
from emgroup.models.vae import VAE, VAEConfig


def test_encode_decode_shapes():
    net = VAE(VAEConfig(z_dim=3, hidden=16, likelihood="bernoulli"), 10).eval()
    latent = net.encode(torch.rand(4, 10, 10))
    assert latent["z"].shape == latent["z_std"].shape == (4, 3) and torch.all(latent["z_std"] > 0)
    images = net.decode(latent)
    assert images.shape == (4, 10, 10) and torch.all((images > 0) & (images < 1))


def test_beta_weights_the_kl_term():
    images = torch.randn(6, 8, 8)
    terms = {}
    for beta in (1.0, 4.0):
        torch.manual_seed(0)  # same weights and the same reparameterisation noise
        terms[beta] = VAE(VAEConfig(hidden=16, beta=beta), 8).loss({"images": images})
    for term in ("recon", "kl"):
        assert torch.allclose(terms[4.0][term], terms[1.0][term])
    for beta, t in terms.items():
        assert t["kl"] > 0
        assert math.isclose((t["loss"] - t["recon"]).item(), beta * t["kl"].item(), rel_tol=1e-4)


@pytest.mark.parametrize("box", [40, 50])
def test_parameter_budget_is_comparable_to_spatial_vae(box):
    counts = {name: sum(p.numel() for p in build_model(name, {"z_dim": 2, "hidden": 500}, box).parameters())
              for name in ("vae", "spatial")}
    assert 1 < counts["vae"] / counts["spatial"] < 2  # see the numbers in emgroup/models/vae.py's docstring


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_finds_the_generative_factor():
    # blobs whose width varies along one factor: a 1-D latent should order them by width
    torch.manual_seed(0)
    box, n = 12, 256
    width = torch.linspace(0.15, 0.5, n)
    radius2 = coordinate_grid(box).pow(2).sum(-1).view(1, box, box)
    images = torch.exp(-radius2 / (2 * width[:, None, None] ** 2))
    net = VAE(VAEConfig(z_dim=1, hidden=32, likelihood="bernoulli"), box)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_before = net.loss({"images": images})["loss"].item()
    for _ in range(300):
        terms = net.loss({"images": images[torch.randint(0, n, (64,))]})
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        loss_after, z = net.loss({"images": images})["loss"].item(), net.encode(images)["z"][:, 0]
    assert loss_after < loss_before - 20
    assert abs(pearson(z.numpy(), width.numpy())) > 0.9
