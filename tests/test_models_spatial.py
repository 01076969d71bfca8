"""spatial-VAE: shapes and canonical decoding, generator equivariance, priors, rotation augmentation, pose search,
training."""

import math

import pytest
import torch
from torch import nn

from emgroup.analysis.metrics import circular_correlation
from emgroup.models import chunking
from emgroup.models.generator import CoordinateGenerator, Tanh
from emgroup.models.grids import coordinate_grid, resample_images, rotation_matrix
from emgroup.models.spatial_vae import SpatialVAE, SpatialVAEConfig, parse_theta_prior


def blobs(box: int, spots) -> torch.Tensor:
    """(D, D) image: a sum of Gaussians ``((x, y) normalized centre, height, width)``."""
    xy = coordinate_grid(box).view(box, box, 2)
    return sum(h * torch.exp(-((xy - torch.tensor(c)) ** 2).sum(-1) / (2 * w * w)) for c, h, w in spots)


ASYMMETRIC = [((0.0, 0.0), 1.0, 0.3), ((0.45, 0.0), 0.8, 0.15), ((0.0, 0.3), 0.6, 0.12)]


def model(box=16, **options) -> SpatialVAE:
    """A small spatial-VAE; the paper's encoder-predicted pose unless ``pose_search`` is given."""
    return SpatialVAE(SpatialVAEConfig(**{"z_dim": 2, "hidden": 32, "pose_search": 0, **options}), box)


def test_encode_decode_shapes_and_canonical_decode():
    torch.manual_seed(0)
    net = model(box=12).eval()
    latent = net.encode(torch.randn(5, 12, 12))
    assert {k: tuple(v.shape) for k, v in latent.items()} == {
        "z": (5, 2), "z_std": (5, 2), "theta": (5,), "theta_std": (5,), "shift": (5, 2), "shift_std": (5, 2)}
    assert torch.all(latent["theta"].abs() <= math.pi) and torch.all(latent["shift_std"] > 0)
    assert net.decode(latent).shape == (5, 12, 12)
    canonical = net.decode({"z": latent["z"]})
    posed = net.decode({"z": latent["z"], "theta": torch.zeros(5), "shift": torch.zeros(5, 2)})
    assert torch.allclose(canonical, posed)
    assert not torch.allclose(canonical, net.decode({**latent, "shift": torch.zeros(5, 2)}), atol=1e-3)
    bernoulli = model(box=12, likelihood="bernoulli").decode({"z": latent["z"]})
    assert torch.all((bernoulli > 0) & (bernoulli < 1))


def test_pose_options_remove_the_pose_outputs():
    net = model(box=12, rotation=False)
    assert set(net.encode(torch.randn(3, 12, 12))) == {"z", "z_std", "shift", "shift_std"}
    assert "kl_theta" not in net.loss({"images": torch.randn(3, 12, 12)})
    net = model(box=12, translation=False)
    assert set(net.encode(torch.randn(3, 12, 12))) == {"z", "z_std", "theta", "theta_std"}


def test_generator_is_equivariant_under_in_plane_rotation_and_shift():
    # rendering in pose (theta, t) then resampling by (gamma, s) equals rendering in the composed pose
    # (theta + gamma, R(theta) s + t): image(R(gamma) x + s) = f(R(theta) (R(gamma) x + s) + t)
    torch.manual_seed(1)
    box, n = 48, 4
    net = model(box=box).eval()
    z, theta, t = torch.randn(n, 2), torch.rand(n) * 6.28, torch.randn(n, 2) * 2
    gamma, s = torch.tensor([0.3, 1.2, -2.0, 3.0]), torch.randn(n, 2)
    with torch.no_grad():
        image = net.decode({"z": z, "theta": theta, "shift": t})
        moved = resample_images(image, gamma, s)
        composed_shift = (rotation_matrix(theta) @ s[..., None])[..., 0] + t
        composed = net.decode({"z": z, "theta": theta + gamma, "shift": composed_shift})
    inside = coordinate_grid(box).norm(dim=-1).view(box, box) < 0.8  # away from the zero-padded border
    error = (moved - composed)[:, inside].abs().max()
    assert error < 0.02 * image.std()
    assert (image - composed)[:, inside].abs().max() > 0.3 * image.std()  # the poses do change the image


def test_generator_tanh_is_tanh_forward_and_backward():
    x = (torch.randn(1000, dtype=torch.float64) * 4).requires_grad_()
    y = Tanh()(x)
    torch.testing.assert_close(y, torch.tanh(x), rtol=0, atol=1e-12)
    grad = torch.randn(1000, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(y, x, grad)[0], grad / torch.cosh(x) ** 2, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(Tanh(), x[:20].detach().requires_grad_())


@pytest.mark.parametrize("images_per_block", [1, 3])
def test_cache_blocks_give_the_straightforward_output_and_gradients(monkeypatch, images_per_block):
    torch.manual_seed(0)
    generator = CoordinateGenerator(z_dim=2, hidden=8, layers=3)
    coords, z = torch.randn(7, 16**2, 2), torch.randn(7, 2)
    calls = []
    draw = generator._draw
    monkeypatch.setattr(generator, "_draw", lambda *tensors: calls.append(len(tensors[0])) or draw(*tensors))

    def output_and_gradients():
        generator.zero_grad()
        out = generator(coords, z)
        out.square().sum().backward()
        return out.detach(), {name: p.grad.clone() for name, p in generator.named_parameters()}

    monkeypatch.setattr(chunking, "CACHE_BYTES", 1 << 40)
    whole, whole_grads = output_and_gradients()
    assert calls == [7]
    monkeypatch.setattr(chunking, "CACHE_BYTES", images_per_block * 16**2 * 8 * 4)  # one layer's output per image
    calls.clear()
    blocked, blocked_grads = output_and_gradients()
    assert calls == [images_per_block] * (7 // images_per_block) + [7 % images_per_block] * (7 % images_per_block > 0)
    torch.testing.assert_close(blocked, whole, rtol=1e-6, atol=1e-6)
    assert len(whole_grads) == 9  # the coordinate and latent branches, three linear layers of the body
    for name, grad in whole_grads.items():
        torch.testing.assert_close(blocked_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)



@pytest.mark.parametrize("spec, sigma", [("uniform", math.pi), ("normal:30", math.radians(30))])
def test_theta_kl_matches_hand_computed_value(spec, sigma):
    net = model(box=8, theta_prior=spec, translation=False)
    last = net.encoder[-1]
    with torch.no_grad():  # encoder outputs (z mean 0, 0; z log-std 0, 0; theta mean 0.5, log-std log 0.1)
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0, 0, 0, 0, 0.5, math.log(0.1)]))
    terms = net.loss({"images": torch.randn(4, 8, 8)})
    mean_term = 0.25 / (2 * sigma**2) if spec != "uniform" else 0.0  # eq. 3 drops the mean
    expected = math.log(sigma / 0.1) + 0.01 / (2 * sigma**2) + mean_term - 0.5
    assert math.isclose(terms["kl_theta"].item(), expected, rel_tol=1e-5)
    assert terms["kl_z"].item() == 0.0
    assert math.isclose(terms["kl"].item(), expected, rel_tol=1e-5)
    assert math.isclose(terms["loss"].item(), terms["recon"].item() + terms["kl"].item(), rel_tol=1e-6)


@pytest.mark.parametrize("spec", ["normal", "normal:-3", "normal:x", "gauss:10"])
def test_bad_theta_prior_is_refused(spec):
    with pytest.raises(ValueError, match="theta-prior"):
        parse_theta_prior(spec)


class CentroidAngle(nn.Module):
    """An exact encoder for images of one off-centre blob at angle 0 of the canonical frame: (theta, log-std)."""

    def forward(self, flat):
        box = math.isqrt(flat.shape[1])
        xy = coordinate_grid(box)
        centroid = (flat[:, :, None] * xy).sum(1) / flat.sum(1, keepdim=True)
        theta = -torch.atan2(centroid[:, 1], centroid[:, 0])  # the blob of canonical(R(theta) x) sits at R(-theta) p
        return torch.stack([theta, torch.full_like(theta, -30.0)], 1)


def test_augmentation_rotation_is_subtracted_from_the_predicted_angle():
    box = 24
    torch.manual_seed(2)
    net = model(box=box, z_dim=0, translation=False, augment_rotation=True)
    net.encoder = CentroidAngle()
    images = resample_images(blobs(box, [((0.5, 0.0), 1.0, 0.12)]).expand(6, box, box), torch.linspace(-3, 3, 6))
    seen = {}
    net.encoder.register_forward_pre_hook(lambda m, args: seen.__setitem__("input", args[0]))
    net.generator.register_forward_pre_hook(lambda m, args: seen.__setitem__("coords", args[0]))
    net.eval()
    net.loss({"images": images})
    plain_coords = seen["coords"]
    assert torch.allclose(seen["input"], images.flatten(1))  # no augmentation at evaluation
    net.train()
    net.loss({"images": images})
    assert (seen["input"] - images.flatten(1)).abs().max() > 0.5  # the encoder saw rotated copies...
    assert (seen["coords"] - plain_coords).abs().max() < 0.03  # ...yet the generator drew the same pose


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_recovers_in_plane_rotation():
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    box, n = 16, 256
    theta = (torch.rand(n, generator=rng) * 2 - 1) * math.pi / 2
    images = resample_images(blobs(box, ASYMMETRIC).expand(n, box, box), theta)
    images = (images - images.mean()) / images.std()
    net = model(box=box, z_dim=1, hidden=64, translation=False)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)

    def evaluate():
        net.eval()
        with torch.no_grad():
            loss, predicted = net.loss({"images": images})["loss"].item(), net.encode(images)["theta"]
        net.train()
        return loss, predicted

    loss_before, theta_before = evaluate()
    for _ in range(200):
        terms = net.loss({"images": images[torch.randint(0, n, (64,), generator=rng)]})
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    loss_after, theta_after = evaluate()
    assert loss_after < loss_before - 200  # nats per image
    # the inferred angle is the true one up to a constant offset: a large resultant length of the difference
    consistency = lambda predicted: torch.exp(1j * (predicted - theta)).mean().abs().item()  # noqa: E731
    assert consistency(theta_after) > 0.95 > consistency(theta_before) + 0.2
    assert circular_correlation(theta_after.numpy(), theta.numpy()) > 0.95


def test_with_pose_search_the_encoder_infers_z_and_the_search_the_pose():
    torch.manual_seed(0)
    net = model(box=12, pose_search=16).eval()
    assert net.encoder[-1].out_features == 4  # z means and log-stds only
    latent = net.encode(torch.randn(5, 12, 12))
    assert {k: tuple(v.shape) for k, v in latent.items()} == {"z": (5, 2), "z_std": (5, 2), "theta": (5,),
                                                               "shift": (5, 2)}
    assert set(model(box=12, pose_search=16, rotation=False).encode(torch.randn(2, 12, 12))) == {"z", "z_std", "shift"}
    assert set(model(box=12, pose_search=16, translation=False).encode(torch.randn(2, 12, 12))) == {
        "z", "z_std", "theta"}
    assert set(net.loss({"images": torch.randn(3, 12, 12)})) == {"loss", "recon", "kl", "kl_z"}


@pytest.mark.slow
def test_pose_search_learns_uniform_rotations_and_shifts_through_a_ctf():
    """Particles of one asymmetric object at uniform angles and random whole-pixel shifts, seen through a CTF, in
    noise: spatial-VAE with the pose search recovers the angles (up to the model's own frame) and the shifts."""
    from emgroup.ctf import apply_ctf, ctf_parameters, ctf_rfft

    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    box, n = 24, 384
    theta = (torch.rand(n, generator=rng) * 2 - 1) * math.pi
    shift = torch.randint(-2, 3, (n, 2), generator=rng).float()
    p = torch.as_tensor(ctf_parameters(4.0, torch.linspace(8000, 20000, n).numpy(), torch.linspace(8000, 20000, n)
                                       .numpy(), 0.0, 300.0, 2.7, 0.1))
    clean = resample_images(blobs(box, ASYMMETRIC).expand(n, box, box), theta, shift)
    images = apply_ctf(clean, ctf_rfft(box, p))
    images = images / images.std() + 0.5 * torch.randn(images.shape, generator=rng)
    net = model(box=box, z_dim=1, hidden=64, pose_search=32, shift_sigma=1.5, ctf=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        pick = torch.randint(0, n, (64,), generator=rng)
        terms = net.loss({"images": images[pick], "ctf_parameters": p[pick]})
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    with torch.no_grad():
        latent = net.eval().encode(images, p)
    consistency = torch.exp(1j * (latent["theta"] - theta)).mean().abs().item()
    assert consistency > 0.9
    # the image-frame origin (RELION's) is R(-theta) shift: compare it with the truth's
    origin = lambda t, s: (rotation_matrix(-t) @ s[..., None])[..., 0]  # noqa: E731
    found, true = origin(latent["theta"], latent["shift"]), origin(theta, shift)
    for axis in range(2):
        assert torch.corrcoef(torch.stack([found[:, axis], true[:, axis]]))[0, 1] > 0.8
