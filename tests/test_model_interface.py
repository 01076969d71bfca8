"""What every model declares (data dimensionality, the pose it infers, the group-action interface) is what it does:
the trainer and `analyze` read these declarations instead of probing the model."""

import pytest
import torch

from emgroup.analysis.inference import POSE_KEYS
from emgroup.models.base import GroupAction, Pose
from emgroup.models.registry import MODELS, build_model

BOX = 16
SMALL = {"vae": {"hidden": 16}, "spatial": {"hidden": 16}, "target": {"channels": 4, "hidden": 16},
         "masked": {"width": 4, "latent_channels": 4}}
#: (model, options) -> (ndim, pose, implements GroupAction, pose entries of encode)
CASES = [
    ("vae", {}, 2, Pose.NONE, False, set()),
    ("spatial", {}, 2, Pose.IN_PLANE, False, {"theta", "shift"}),
    ("spatial", {"rotation": False}, 2, Pose.IN_PLANE, False, {"shift"}),
    ("spatial", {"rotation": False, "translation": False}, 2, Pose.NONE, False, set()),
    ("target", {}, 2, Pose.IN_PLANE, False, {"theta", "shift"}),
    ("masked", {}, 2, Pose.NONE, True, set()),
    ("masked", {"group": "SO3"}, 3, Pose.NONE, True, set()),
]


@pytest.mark.parametrize("name, options, ndim, pose, group_action, pose_entries", CASES)
def test_declared_capabilities_match_what_encode_returns(name, options, ndim, pose, group_action, pose_entries):
    torch.manual_seed(0)
    model = build_model(name, {**SMALL[name], "ctf": False, **options}, BOX).eval()
    assert (model.ndim, model.pose, isinstance(model, GroupAction), model.uses_ctf) == (ndim, pose, group_action,
                                                                                        False)
    assert type(model).data_ndim({**SMALL[name], **options}) == ndim
    with torch.no_grad():
        latent = model.encode(torch.randn(3, *(BOX,) * ndim))
    assert set(latent) & set(POSE_KEYS) == pose_entries


def test_every_registered_model_is_covered():
    assert {case[0] for case in CASES} == set(MODELS)


def test_group_action_swap_and_turns_agree_with_the_encoding():
    torch.manual_seed(0)
    model = build_model("masked", {**SMALL["masked"], "ctf": False}, BOX).eval()
    model.alpha.data = torch.tensor([1.0, -1.0, 1.0, -1.0])  # channels 0 and 2 acted on
    with torch.no_grad():
        latent = model.encode(torch.randn(2, BOX, BOX))
        swapped = model.swap(latent["z"], latent["z"].flip(0))
    assert model.channel_mask().tolist() == [1.0, 0.0, 1.0, 0.0]
    torch.testing.assert_close(swapped, latent["z_v"] + latent["z_i"].flip(0), rtol=0, atol=0)
    angles = torch.tensor([0.5, -2.0])
    assert torch.equal(model.turns(angles), angles)
    volumes = build_model("masked", {**SMALL["masked"], "ctf": False, "group": "SO3"}, BOX)
    turned = volumes.turns(torch.tensor([torch.pi / 2]))[0]  # a quarter turn about y: x -> -z, y fixed
    torch.testing.assert_close(turned, torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["spatial", "target"])
def test_freeze_z_epochs_hold_z_at_zero(name):
    torch.manual_seed(0)
    model = build_model(name, {**SMALL[name], "ctf": False, "freeze_z_epochs": 2}, BOX)
    seen = {}
    model.generator.register_forward_pre_hook(lambda module, args: seen.__setitem__("z", args[1]))
    for epoch, frozen in [(0, True), (1, True), (2, False)]:
        model.on_epoch_start(epoch)
        terms = model.loss({"images": torch.randn(4, BOX, BOX)})
        assert (terms["kl_z"].item() == 0.0) == frozen
        assert torch.all(seen["z"] == 0) == frozen
