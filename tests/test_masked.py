"""The masked-latent group-action model: the straight-through mask, the group actions on z_v and on the data, the
analysis helpers, and a tiny training run that learns a mixed mask."""

import math

import numpy as np
import pytest
import torch

from emgroup.analysis.inference import group_action_examples
from emgroup.geometry import (ball_mask, random_rotations, random_rotations_numpy, rotate_volume_numpy,
                              rotation_angle)
from emgroup.models.grids import resample_images
from emgroup.models.masked import MaskedGroupAction
from emgroup.models.registry import model_class


def small(box=16, **options):
    torch.manual_seed(0)
    return MaskedGroupAction.from_config({"width": 4, "latent_channels": 6, **options}, box)


def test_registered_and_volume_models_take_volumes():
    assert model_class("masked") is MaskedGroupAction
    assert MaskedGroupAction.data_ndim({"group": "SO3"}) == 3 and MaskedGroupAction.data_ndim({}) == 2
    model = small(12, group="SO3")
    volumes = torch.randn(2, 12, 12, 12)
    assert model.decode(model.encode(volumes)).shape == (2, 12, 12, 12)


def test_straight_through_mask_is_binary_with_the_sigmoid_gradient():
    model = small()
    with torch.no_grad():
        model.alpha.copy_(torch.tensor([-2.0, -0.3, -1e-4, 1e-4, 0.4, 3.0]))
    mask = model.channel_mask()
    assert mask.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # exactly binary
    weights = torch.arange(1.0, 7.0)
    (weights * mask).sum().backward()
    s = torch.sigmoid(model.alpha.detach())
    assert torch.allclose(model.alpha.grad, weights * s * (1 - s))
    model.alpha.grad = None
    model.loss({"images": torch.randn(4, 16, 16)})["loss"].backward()
    assert (model.alpha.grad != 0).all()  # every term reaches the mask through the estimator


def test_vector_actions_are_group_actions_on_z_v_only():
    model = small(group="SO3", action="vector")
    z = torch.randn(5, 6 * 3)
    g, h = random_rotations(5, generator=torch.Generator().manual_seed(0)), random_rotations(5)
    assert torch.allclose(model.act(model.act(z, h), g), model.act(z, g @ h), atol=1e-5)  # g.(h.z) = (gh).z
    assert torch.allclose(model.act(z, torch.eye(3).expand(5, 3, 3)), z)
    with torch.no_grad():
        model.alpha.copy_(torch.tensor([1.0, -1, 1, -1, -1, 1]))
    acted, z3 = model.act(z, g).view(5, 6, 3), z.view(5, 6, 3)
    assert torch.equal(acted[:, [1, 3, 4]], z3[:, [1, 3, 4]])  # z_i untouched
    assert torch.allclose(acted[:, 0], (g @ z3[:, 0, :, None])[..., 0], atol=1e-6)  # rho(A) = A on z_v
    plane = small(action="vector", frequencies=3)
    z2 = torch.randn(5, 6 * 2)
    a, b = torch.rand(5) * 6, torch.rand(5) * 6
    assert torch.allclose(plane.act(plane.act(z2, a), b), plane.act(z2, a + b), atol=1e-5)
    assert torch.allclose(plane.act(z2, torch.full((5,), 2 * math.pi)), z2, atol=1e-5)
    # channel c turns by f_c = 1 + c mod 3: a third of a turn fixes exactly the frequency-3 channels
    third = plane.act(z2, torch.full((5,), 2 * math.pi / 3)).view(5, 6, 2)
    assert torch.allclose(third[:, [2, 5]], z2.view(5, 6, 2)[:, [2, 5]], atol=1e-5)
    assert not torch.allclose(third[:, [0, 1]], z2.view(5, 6, 2)[:, [0, 1]], atol=1e-2)


def test_spatial_action_turns_the_latent_grid_like_the_image():
    model = small(28)
    quarter = torch.full((3,), math.pi / 2)
    z = torch.randn(3, *model.latent_shape) * model.latent_support
    with torch.no_grad():
        model.alpha.fill_(1.0)  # all acted on
    acted = model.act(z.flatten(1), quarter).view_as(z)
    # the images: out(x, y) = in(R(pi/2)(x, y)) = in(-y, x), i.e. rot90 of the (row, column) array
    image = torch.zeros(1, 28, 28)
    image[0, 14, 20] = 1.0  # a pixel on the +x axis ...
    assert resample_images(image, quarter[:1])[0, 8, 14] == 1.0  # ... lands on -y (row 14 - 6)
    assert torch.allclose(acted, torch.rot90(z, 1, dims=(-2, -1)), atol=1e-6)
    assert torch.allclose(resample_images(image, quarter[:1]), torch.rot90(image, 1, dims=(-2, -1)).roll(1, -2))


def test_volume_transform_is_the_simulated_rotation_and_a_group_action(blob_volume):
    model = small(blob_volume[0].shape[-1], group="SO3")
    vol = torch.from_numpy(blob_volume[0])[None]
    a = random_rotations_numpy(2, np.random.default_rng(5))
    simulated = torch.from_numpy(rotate_volume_numpy(blob_volume[0], a[0].T))
    g = torch.from_numpy(a).float()
    turned = model.transform(vol, g[:1])
    mask = ball_mask(vol.shape[-1])
    error = lambda x, y: float(((x - y) * mask).norm() / (y * mask).norm())  # noqa: E731
    assert error(turned[0], simulated) < 0.1  # T_A: the object turned by RELION's A
    assert error(model.transform(turned, g[1:]), model.transform(vol, g[1:] @ g[:1])) < 0.15  # T_g T_h = T_gh
    assert error(model.transform(turned, g[:1].transpose(1, 2))[0], vol[0]) < 0.15  # g then g^-1


def test_analysis_helpers():
    model = small()
    model.eval()
    with torch.no_grad():
        model.alpha.copy_(torch.tensor([1.0, -1, 1, -1, 1, -1]))
    x = torch.randn(3, 16, 16)
    enc = model.encode(x)
    assert enc["mask"].shape == (3, 6) and enc["mask"][0].tolist() == [1, 0, 1, 0, 1, 0]
    assert torch.equal(enc["z_std"], torch.zeros_like(enc["z"]))
    assert torch.allclose(enc["z_v"] + enc["z_i"], enc["z"])
    swapped = model.swap(enc["z"], enc["z"].flip(0)).view(3, *model.latent_shape)
    z = enc["z"].view(3, *model.latent_shape)
    assert torch.equal(swapped[:, 0::2], z[:, 0::2]) and torch.equal(swapped[:, 1::2], z.flip(0)[:, 1::2])
    theta = torch.tensor([0.3, -1.0, 2.0])
    assert torch.allclose(model.predict(x, theta), model.decode({**enc, "theta": theta}))
    assert not torch.allclose(model.predict(x, theta), model.decode(enc))


def test_group_action_examples_turn_in_plane_and_about_y(blob_volume):
    """The analysis figure's examples: angle 0 is the masked input itself, the predictions are the model's, and for
    volumes 90 and 270 degrees are opposite quarter turns about y (exact voxel permutations in the z-x plane)."""
    model = small().eval()
    x = torch.randn(2, 16, 16)
    truth, predicted = group_action_examples(model, x.numpy(), [0, 30])
    assert truth.shape == predicted.shape == (2, 2, 16, 16)
    np.testing.assert_allclose(truth[:, 0], (x * model.support).numpy(), atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(predicted[:, 1], model.predict(x, torch.full((2,), math.radians(30))).numpy(),
                                   atol=1e-5)
    volume = blob_volume[0][1:, 1:, 1:]  # odd box: the centre D // 2 is the array's centre, about which rot90 turns
    model = small(volume.shape[-1], group="SO3").eval()
    truth, _ = group_action_examples(model, volume[None], [90, 270])
    masked = volume * model.support.numpy()
    turns = [np.rot90(masked, k, axes=(0, 2)) for k in (1, -1)]
    quarter = np.argmin([np.abs(truth[0, 0] - turn).max() for turn in turns])
    np.testing.assert_allclose(truth[0, 0], turns[quarter], atol=1e-4)
    np.testing.assert_allclose(truth[0, 1], turns[1 - quarter], atol=1e-4)


def _rotated_digits(shared_data, n=512):
    digits = np.load(shared_data / "mnist10k.npz")
    images = torch.from_numpy(digits["images"][:4].astype(np.float32) / 255.0).repeat(n // 4, 1, 1)
    return resample_images(images, (torch.rand(n) * 2 - 1) * math.pi)


@pytest.mark.slow
@pytest.mark.parametrize("start", [1.0, -1.0])
def test_tiny_training_learns_a_mixed_mask(shared_data, start):
    """Four digits in random in-plane rotations: from every channel acted on (or none), a few hundred steps end
    with some channels variant and some invariant, and g.x predicted better than by x itself."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = _rotated_digits(shared_data)
    model = MaskedGroupAction.from_config({"width": 8, "latent_channels": 8}, 28)
    with torch.no_grad():
        model.alpha.fill_(0.01 * start)
    assert model.channel_mask().sum() == (8 if start > 0 else 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(150):
        loss = model.loss({"images": data[torch.randint(0, len(data), (32,))]})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    variant = int(model.channel_mask().sum())
    assert 0 < variant < 8
    with torch.no_grad():
        x = data[:128] * model.support
        g = model.sample_group(128)
        target = model.transform(x, g)
        predicted = model.predict(x, g)
    assert ((predicted - target) ** 2).mean() < 0.6 * ((x - target) ** 2).mean()


@pytest.mark.parametrize("group", ["SO2", "SO3"])
def test_sample_group_draws_in_the_range_asked_and_by_default_the_training_range(group):
    model = model_class("masked").from_config({"group": group, "width": 4, "latent_channels": 4,
                                               "max_angle": 60.0}, 16)
    generator = torch.Generator().manual_seed(0)

    def degrees(g):
        return torch.rad2deg(g.abs() if group == "SO2" else rotation_angle(g))

    trained = degrees(model.sample_group(2000, generator=generator))
    unseen = degrees(model.sample_group(2000, between=(90.0, 180.0), generator=generator))
    assert trained.max() <= 60 + 1e-3 and trained.max() > 58
    assert unseen.min() >= 90 - 1e-3 and unseen.max() <= 180 + 1e-3 and unseen.min() < 92 and unseen.max() > 170
    if group == "SO2":  # both signs, uniform in magnitude
        g = model.sample_group(2000, between=(90.0, 180.0), generator=generator)
        assert 0.45 < (g > 0).float().mean() < 0.55 and abs(degrees(g).mean() - 135) < 3
