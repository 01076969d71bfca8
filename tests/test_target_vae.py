"""TARGET-VAE: equivariance of the posterior, KL terms by hand, and a trained tiny model."""

import copy
import math

import pytest
import torch

from emgroup.models import chunking, generator
from emgroup.geometry import wrap_angle
from emgroup.models.grids import resample_images, rotation_matrix
from emgroup.models.registry import build_model

TINY = {"channels": 8, "hidden": 32, "fourier_features": 64}


def tiny_model(box=21, seed=0, **options):
    torch.manual_seed(seed)
    return build_model("target", {**TINY, "group": "P4", **options}, box)


def digits(n: int, box: int, seed: int = 0) -> torch.Tensor:
    """(n, box, box) asymmetric images (three blobs, one bright) kept away from the border."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.arange(box, dtype=torch.float32) - box // 2
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    centres = (torch.rand(n, 3, 2, generator=g) - 0.5) * box * 0.35
    weights = torch.tensor([1.0, 0.6, 0.3])[:, None, None]
    d2 = (x - centres[..., 0, None, None]) ** 2 + (y - centres[..., 1, None, None]) ** 2
    return (weights * torch.exp(-d2 / 4.0)).sum(1)


def test_shifting_the_input_shifts_the_attention_map_and_the_pose():
    model = tiny_model().eval()
    images = digits(3, 21)
    moved = torch.roll(images, (1, 2), (-2, -1))  # content moves by s = (x 2, y 1) px; zeros roll in
    with torch.no_grad():
        a, b = model._posterior(images)["logits"], model._posterior(moved)["logits"]
        torch.testing.assert_close(b[:, 1:, 2:], a[:, :-1, :-2], atol=1e-5, rtol=1e-5)
        e, f = model.encode(images), model.encode(moved)
    # image(x - s) = canonical(R(theta) x + t - R(theta) s)
    s = torch.tensor([2.0, 1.0])
    expected = e["shift"] - rotation_matrix(e["theta"]) @ s
    torch.testing.assert_close(f["shift"], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(f["theta"], e["theta"])
    torch.testing.assert_close(f["z"], e["z"])


def test_quarter_turn_of_the_input_turns_the_pose_and_keeps_z():
    model = tiny_model().eval()
    images = digits(3, 21, seed=1)
    turned = torch.rot90(images, 1, (-2, -1))  # image(R(pi/2) x): pose (theta + pi/2, same shift)
    with torch.no_grad():
        e, f = model.encode(images), model.encode(turned)
    torch.testing.assert_close(wrap_angle(f["theta"] - e["theta"] - math.pi / 2), torch.zeros(3), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(f["shift"], e["shift"], atol=1e-4, rtol=0)
    torch.testing.assert_close(f["z"], e["z"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f["q_tr"], torch.roll(torch.rot90(e["q_tr"], 1, (-2, -1)), 1, 1), atol=1e-6,
                               rtol=1e-4)


def test_kl_terms_by_hand():
    """3 x 3 translation grid at -1, 0, 1 px, 4 rotations, uniform q, shift_sigma 1 px, uniform p(r)."""
    model = build_model("target", {**TINY, "group": "P4", "z_dim": 2, "kernel_size": 5, "padding": 1,
                                   "shift_sigma": 1.0}, 5)
    assert model.positions[..., 0].unique().tolist() == [-1.0, 0.0, 1.0]
    shape = (1, 3, 3, 4)
    post = {"logits": torch.zeros(shape),
            "theta": (model.angles + 0.1 + torch.zeros(shape), torch.full(shape, math.log(0.2))),
            "z": (torch.full((*shape, 2), 0.5), torch.zeros((*shape, 2))),
            "position": (model.positions[:, :, None] + torch.tensor([0.3, -0.3]), torch.full(shape, math.log(0.5)))}
    kl = {k: v.item() for k, v in model.kl(post).items()}
    # q = 1/36; p(t, r) = exp(-|t|^2 / 2) / Z / 4, Z = 1 + 4 e^-1/2 + 4 e^-1; mean |t|^2 / 2 over the grid = 6/9
    assert kl["kl_tr"] == pytest.approx(-math.log(9) + 6 / 9 + math.log(1 + 4 * math.exp(-0.5) + 4 * math.exp(-1)),
                                        abs=1e-6)
    sigma = math.pi / 4  # p(theta | r) = N(alpha_r, (pi/4)^2)
    assert kl["kl_theta"] == pytest.approx(math.log(sigma / 0.2) + (0.2**2 + 0.1**2) / (2 * sigma**2) - 0.5,
                                           abs=1e-6)
    assert kl["kl_z"] == pytest.approx(2 * 0.5**2 / 2, abs=1e-6)
    assert kl["kl_shift"] == pytest.approx(2 * 0.3**2 / (2 * 0.5**2), abs=1e-6)  # delta ~ N(0, 0.5^2), std = prior


def test_encode_shapes_and_options():
    model = tiny_model(box=24, group="P8", z_dim=3, kernel_size=13, padding=2, subpixel=False)
    with torch.no_grad():
        e = model.eval().encode(digits(2, 24))
    assert e["z"].shape == e["z_std"].shape == (2, 3)
    assert e["shift"].shape == (2, 2) and e["theta"].shape == (2,)
    assert e["q_tr"].shape == (2, 8, 16, 16)
    torch.testing.assert_close(e["q_tr"].sum((1, 2, 3)), torch.ones(2))
    assert model.decode(e).shape == (2, 24, 24)
    for bad, message in [({"rotation_prior": "normal:-3"}, "rotation-prior"), ({"group": "SO3"}, "group"),
                         ({"kernel_size": 30, "padding": 2}, "kernel-size")]:
        with pytest.raises(ValueError, match=message):
            tiny_model(**bad)


@pytest.mark.slow
def test_trained_model_angle_follows_the_rotation():
    """A tiny P8 model trained on randomly rotated copies of a few patterns predicts, for a pattern rotated by
    gamma = k 45 degrees (interpolated, so not exactly a roll of the group axis), an angle that moves by gamma.
    Trained with the hard Gumbel sample: at this size (100 steps) the soft one settles on every other bin (4 of 7)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    box = 21
    base = digits(4, box, seed=3)
    model = tiny_model(box=box, group="P8", kernel_size=15, padding=1, channels=16, hidden=64, fourier_features=128,
                       shift_sigma=1.0, gumbel="hard")
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(100):
        angles = (torch.rand(32) * 2 - 1) * math.pi
        batch = resample_images(base[torch.randint(0, 4, (32,))], angles)
        loss = model.loss({"images": batch})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    gammas = torch.arange(1, 8).repeat(4) * (math.pi / 4)
    images = base.repeat_interleave(7, 0)
    with torch.no_grad():
        before = model.eval().encode(images)["theta"]
        after = model.encode(resample_images(images, gammas))["theta"]
    error = wrap_angle(after - before - gammas)
    assert error.abs().median() < math.radians(10)
    assert (error.abs() < math.radians(30)).float().mean() > 0.8


def plain_fourier_linear(layer, coords, shift):
    """The formula FourierLinear computes block by block, with every intermediate stored."""
    return layer.linear(torch.cos(coords @ layer.freq + layer.phase)) + shift[:, None]


@pytest.mark.parametrize("rows", [7, 512])
def test_fourier_linear_blocks_match_the_formula_and_its_gradients(monkeypatch, rows):
    monkeypatch.setitem(generator.BLOCK_ROWS, "cpu", rows)  # blocks that split images, and one block
    torch.manual_seed(0)
    layer = generator.FourierLinear(64, 2 / 20, 16)
    coords = (torch.rand(3, 50, 2) * 2 - 1).requires_grad_()
    shift = torch.randn(3, 16, requires_grad=True)
    probe = torch.randn(3, 50, 16)
    results = []
    for fn in (layer, lambda c, s: plain_fourier_linear(layer, c, s)):
        layer.zero_grad()
        coords.grad = shift.grad = None
        out = fn(coords, shift)
        (out * probe).sum().backward()
        results.append([out.detach(), coords.grad, shift.grad, layer.linear.weight.grad, layer.linear.bias.grad])
    for fused, plain in zip(*results):
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)


def test_fourier_linear_under_bf16_autocast_keeps_fp32_phases():
    torch.manual_seed(0)
    layer = generator.FourierLinear(256, 2 / 50, 64)
    coords, shift = torch.rand(2, 1000, 2) * 2 - 1, torch.randn(2, 64)
    exact = plain_fourier_linear(layer, coords, shift)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = layer(coords, shift)
    assert mixed.dtype == torch.bfloat16
    # bf16 products: ~1% relative error; bf16 phases (tens of radians) would give ~30%
    assert (mixed.float() - exact).norm() / exact.norm() < 0.02


def test_posterior_parameters_stay_fp32_under_bf16_autocast():
    model = tiny_model()
    images = torch.rand(2, 21, 21)
    exact = model._posterior(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model._posterior(images)
    assert mixed["logits"].dtype == mixed["theta"][0].dtype == mixed["z"][0].dtype == torch.float32
    # the encoder's products in bf16, then an fp32 head: the logits keep their differences between cells
    assert (mixed["logits"] - exact["logits"]).abs().max() < 0.05 * exact["logits"].std()



def loss_and_gradients(model, images, seed=0):
    """The training loss of ``images`` and every parameter's gradient, for a fixed draw of the model's noise (on a
    copy: a training step moves the generator's centre)."""
    model = copy.deepcopy(model)
    torch.manual_seed(seed)
    loss = model.loss({"images": images, "index": torch.arange(len(images))})["loss"]
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk_bytes, fft", [(1, True), (300_000, False)])  # one image per chunk; a few images
def test_chunked_recomputation_gives_the_straightforward_gradients(monkeypatch, chunk_bytes, fft):
    model = tiny_model(generator_layers=3)
    model.lift.fft = fft  # the kernels' spectrum computed once for all chunks, or the direct convolution
    images = digits(5, 21)
    loss, grads = loss_and_gradients(model, images)
    monkeypatch.setattr(chunking, "STORE_LIMIT", 1)
    monkeypatch.setattr(chunking, "CHUNK_BYTES", chunk_bytes)
    assert chunking.chunk_size(5, model.config.hidden * 21**2 * 4 * 6) < 5  # the generator is split indeed
    chunked_loss, chunked_grads = loss_and_gradients(model, images)
    torch.testing.assert_close(chunked_loss, loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == chunked_grads.keys() and len(grads) >= 10  # encoder and generator layers
    for name, grad in grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_chunks_bound_the_memory_that_autograd_keeps(monkeypatch):
    """The tensors autograd saves for backward: a whole batch's straightforwardly, one chunk's when chunked."""
    model = tiny_model(generator_layers=3)
    images = digits(8, 21)

    def saved_bytes():
        total = 0

        def pack(tensor):
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model.loss({"images": images, "index": torch.arange(8)})
        return total

    whole = saved_bytes()
    monkeypatch.setattr(chunking, "STORE_LIMIT", 1)
    monkeypatch.setattr(chunking, "CHUNK_BYTES", 1)
    assert saved_bytes() < whole / 4


def test_under_bf16_autocast_the_generator_is_split_by_the_bytes_of_its_bf16_activations(monkeypatch):
    """A batch whose fp32 activations would pass the store limit, and whose bf16 ones do not, runs unsplit in bf16."""
    torch.manual_seed(0)
    net = generator.CoordinateGenerator(2, hidden=32, layers=3, activation="leaky_relu", fourier_features=16)
    coords, z = torch.rand(4, 100, 2), torch.randn(4, 2, requires_grad=True)
    monkeypatch.setattr(chunking, "STORE_LIMIT", 3 * 4 * 100 * 32 * len(net.body))  # 3 bytes an activation
    monkeypatch.setattr(chunking, "CHUNK_BYTES", 1)
    chunks = []
    monkeypatch.setattr(chunking, "checkpoint", lambda fn, *args, **kwargs: chunks.append(len(args[0])) or fn(*args))
    net(coords, z).sum().backward()
    assert chunks == [1, 1, 1, 1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(coords, z)
    out.float().sum().backward()
    assert chunks == [1, 1, 1, 1] and out.dtype == torch.bfloat16
