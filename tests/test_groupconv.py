"""Group convolutions over P_r: FFT = direct convolution, kernel rotation convention, equivariance."""

import math

import pytest
import torch
import torch.nn.functional as F

from emgroup.geometry import ball_mask
from emgroup.models import groupconv
from emgroup.models.grids import resample_images
from emgroup.models.groupconv import GroupConv1x1, LiftingConv, fft_conv2d, rotated_kernels


def blobs(n: int, box: int, seed: int = 0) -> torch.Tensor:
    """(n, 1, box, box) smooth asymmetric images: three Gaussian blobs each, inside the inscribed disc."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.arange(box, dtype=torch.float64) - box // 2
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    centres = (torch.rand(n, 3, 2, generator=g, dtype=torch.float64) - 0.5) * box * 0.4
    d2 = (x - centres[..., 0, None, None]) ** 2 + (y - centres[..., 1, None, None]) ** 2
    return torch.exp(-d2 / (box / 8) ** 2).sum(1, keepdim=True).float()


@pytest.mark.parametrize("padding", [0, 4])
def test_fft_conv_equals_direct_conv_values_and_gradients(padding):
    torch.manual_seed(0)
    images = torch.randn(3, 2, 17, 17, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 2, 9, 9, dtype=torch.float64, requires_grad=True)
    direct = F.conv2d(images, weight, padding=padding)
    fft = fft_conv2d(images, weight, padding)
    assert fft.shape == direct.shape
    torch.testing.assert_close(fft, direct, rtol=1e-10, atol=1e-10)
    seed = torch.randn_like(direct)
    grads_direct = torch.autograd.grad((direct * seed).sum(), (images, weight))
    grads_fft = torch.autograd.grad((fft * seed).sum(), (images, weight))
    for a, b in zip(grads_fft, grads_direct):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_rotated_kernels_follow_the_pose_convention():
    """Kernel k is w(R(alpha_k) x) like grids.resample_images; quarter turns are exact rolls of the stack."""
    weight = blobs(2, 15)  # (C_out, C_in, K, K)
    kernels = rotated_kernels(weight, 8)
    assert kernels.shape == (8, 2, 1, 15, 15)
    masked = weight[:, 0] * ball_mask(15)
    expected = resample_images(masked, torch.full((2,), math.pi / 4), mode="bicubic") * ball_mask(15)
    assert (kernels[1, :, 0] - expected).abs().max() < 0.03 * expected.abs().max()  # sinc vs bicubic
    torch.testing.assert_close(kernels[0], weight * ball_mask(15), atol=1e-5, rtol=0)
    for k in range(8):
        torch.testing.assert_close(kernels[(k + 2) % 8], torch.rot90(kernels[k], 1, (-2, -1)), atol=0, rtol=0)
    # an off-centre blob in w at p shows up at R(-alpha) p in w(R(alpha) x): 90 degrees takes (+x) to (-y)
    spot = torch.zeros(1, 1, 15, 15)
    spot[0, 0, 7, 11] = 1.0  # x = +4, y = 0
    assert (rotated_kernels(spot, 4)[1, 0, 0] > 1e-3).nonzero().tolist() == [[3, 7]]  # x = 0, y = -4


def test_lifting_conv_is_exactly_equivariant_to_quarter_turns():
    torch.manual_seed(0)
    layer = LiftingConv(1, 6, 11, 3, rotations=4)
    images = blobs(2, 21)
    out = layer(images)
    turned = layer(torch.rot90(images, 1, (-2, -1)))
    assert out.shape == (2, 17, 17, 4, 6)
    # image(R(pi/2) x): every map turns the same way and rotation k of the original becomes k + 1
    expected = torch.roll(torch.rot90(out, 1, (1, 2)), 1, 3)
    torch.testing.assert_close(turned, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fft", [False, True])
def test_lifting_conv_p8_is_equivariant_within_interpolation(fft):
    torch.manual_seed(0)
    layer = LiftingConv(1, 4, 15, 6, rotations=8, fft=fft)
    layer.weight.data = blobs(4, 15, seed=1)  # smooth kernels: small interpolation error
    images = blobs(2, 33, seed=2)
    angle = torch.full((2,), math.pi / 4)
    out = layer(images)  # (2, 31, 31, 8, 4)
    turned = layer(resample_images(images[:, 0], angle)[:, None])
    n, h, w, r, c = out.shape
    maps = out.permute(0, 3, 4, 1, 2).reshape(n, r * c, h, w)
    rotated = torch.stack([resample_images(maps[:, i], angle) for i in range(r * c)], 1)
    expected = torch.roll(rotated.view(n, r, c, h, w).permute(0, 3, 4, 1, 2), 1, 3)
    inside = ball_mask(h).bool()[None, :, :, None, None].expand_as(out) & (expected.abs() > 0)
    error = (turned - expected)[inside].norm() / expected[inside].norm()
    assert error < 0.05
    wrong = (turned - torch.roll(expected, 1, 3))[inside].norm() / expected[inside].norm()
    assert wrong > 5 * error  # the roll by one rotation is what makes them agree



def test_under_bf16_autocast_on_the_cpu_the_lifting_conv_is_direct_at_every_kernel_size(monkeypatch):
    torch.manual_seed(0)
    layer = LiftingConv(1, 4, 49, 4, rotations=8)  # kernel >= FFT_MIN_KERNEL["cpu"]: the FFT in fp32
    images = blobs(2, 51)
    calls = []
    fft = groupconv.fft_conv2d
    monkeypatch.setattr(groupconv, "fft_conv2d", lambda *args, **kwargs: calls.append(1) or fft(*args, **kwargs))
    exact = layer(images)
    assert calls == [1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = layer(images)
    assert calls == [1]  # no FFT: the unfolded patches' product, in bf16
    assert mixed.dtype == torch.bfloat16
    assert (mixed.float() - exact).norm() / exact.norm() < 0.02

def test_group_conv_commutes_with_rotation_roll_and_mixes_neighbours():
    torch.manual_seed(0)
    layer = GroupConv1x1(5, 3, span=3)
    x = torch.randn(2, 4, 4, 8, 5)
    torch.testing.assert_close(layer(torch.roll(x, 3, 3)), torch.roll(layer(x), 3, 3))
    torch.testing.assert_close(layer(torch.rot90(x, 1, (1, 2))), torch.rot90(layer(x), 1, (1, 2)))
    bumped = x.clone()
    bumped[:, :, :, 4] += 1.0  # rotation 4 feeds outputs 3, 4, 5 only
    changed = (layer(bumped) - layer(x)).abs().amax((0, 1, 2, 4)) > 1e-6
    assert changed.tolist() == [False, False, False, True, True, True, False, False]
