"""The CTF in every image model: the likelihood sees the generated image times each particle's CTF, computed from
the batch's CTF parameters; rotating an image turns its CTF's astigmatism with it; the option's checks."""

import math

import numpy as np
import pytest
import torch

from emgroup.ctf import apply_ctf, ctf_parameters, ctf_rfft, rotate_ctf_parameters
from emgroup.models.grids import resample_images
from emgroup.models.registry import build_model

BOX = 16
TINY = {"spatial": {"hidden": 16}, "vae": {"hidden": 16},
        "target": {"channels": 4, "hidden": 16, "fourier_features": 32, "group": "P4", "kernel_size": 9}}


def parameters(n: int, amplitude_contrast: float = 0.1) -> torch.Tensor:
    """(n, 9) CTF rows with 4,000 Å astigmatism, 2.5 Å/px."""
    return torch.as_tensor(ctf_parameters(2.5, np.linspace(9000, 20000, n), np.linspace(5000, 16000, n),
                                          np.linspace(-60, 80, n), 300.0, 2.7, amplitude_contrast))


def smooth_images(n: int, seed: int = 0, box: int = BOX) -> torch.Tensor:
    """(n, box, box) low-pass random objects inside the inscribed disc (bilinear rotation stays accurate)."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.fft.rfft2(torch.randn(n, box, box, generator=g))
    s2 = torch.fft.fftfreq(box)[:, None] ** 2 + torch.fft.rfftfreq(box)[None] ** 2
    axis = torch.arange(box) - box // 2
    disc = torch.exp(-(axis[:, None] ** 2 + axis[None] ** 2) / (box / 5) ** 2)
    return torch.fft.irfft2(spectrum * torch.exp(-s2 * 60), s=(box, box)) * disc


@pytest.mark.parametrize("name", TINY)
def test_the_likelihood_compares_the_ctf_filtered_generated_image(name):
    """A generator drawing the constant b is seen through the CTF as CTF(0) b = w b (w the amplitude contrast,
    no phase shift), so the Gaussian NLL (sigma 1) is that of w b; without --ctf it is that of b."""
    images = smooth_images(4)

    def recon(ctf: bool) -> float:
        torch.manual_seed(0)
        model = build_model(name, {**TINY[name], "ctf": ctf, "z_dim": 2}, BOX)
        last = (model.decoder if name == "vae" else model.generator.body)[-1]
        last.weight.data.zero_()
        last.bias.data.fill_(0.7)
        batch = {"images": images, "index": torch.arange(4), "ctf_parameters": parameters(4, 0.5)}
        return model.loss(batch)["recon"].item()

    def by_hand(value):
        return (0.5 * ((images - value) ** 2).sum((1, 2)) + 0.5 * BOX**2 * math.log(2 * math.pi)).mean().item()

    assert recon(False) == pytest.approx(by_hand(0.7), rel=1e-5)
    assert recon(True) == pytest.approx(by_hand(0.35), rel=1e-5)


def test_rotated_images_carry_the_ctf_turned_with_them():
    box, theta = 40, torch.tensor([0.7, -2.0, 1.2])
    images, p = smooth_images(3, seed=1, box=box), parameters(3)
    turned = resample_images(apply_ctf(images, ctf_rfft(box, p)), theta)
    for rows, close in ((rotate_ctf_parameters(p, theta), True), (rotate_ctf_parameters(p, -theta), False)):
        filtered = apply_ctf(resample_images(images, theta), ctf_rfft(box, rows))
        r = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(turned.numpy(), filtered.numpy())]
        assert (min(r) > 0.998) if close else (max(r) < 0.98)


def test_masked_model_sees_its_prediction_of_the_turned_particle_through_the_turned_ctf(monkeypatch):
    """The transform term compares T_g x with D(Phi_g E x) filtered by the CTF rows turned by g."""
    torch.manual_seed(0)
    model = build_model("masked", {"ctf": True, "width": 4, "latent_channels": 4}, BOX)
    g = torch.tensor([0.5, -1.0])
    monkeypatch.setattr(model, "sample_group", lambda n, device=None: g)
    seen = []
    monkeypatch.setattr("emgroup.models.masked.ctf_rfft", lambda box, rows: seen.append(rows) or ctf_rfft(box, rows))
    p = parameters(2)
    model.loss({"images": smooth_images(2), "index": torch.arange(2), "ctf_parameters": p})
    torch.testing.assert_close(seen[-1], rotate_ctf_parameters(p, g))


@pytest.mark.parametrize("name, options, message", [
    ("spatial", {"likelihood": "bernoulli"}, "likelihood gaussian"),
    ("target", {"likelihood": "bernoulli"}, "likelihood gaussian"),
    ("masked", {"group": "SO3"}, "SO3 takes --no-ctf")])
def test_the_ctf_is_refused_where_it_means_nothing(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, {**options, "ctf": True}, BOX)
