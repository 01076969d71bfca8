"""Coordinate generator shared by spatial-VAE and TARGET-VAE: one pixel value from (x', z).

spatial-VAE (Bepler et al. 2019): x' enters through a linear layer; TARGET-VAE (Nasiri & Bepler 2022): through
random Fourier features ``cos(W x' / sigma + b)``, W ~ N(0, 1), b ~ U(0, 2 pi), sigma = one pixel. In both, the
z branch is a separate linear layer whose output is added to the coordinate branch, then shared hidden layers.
"""

import functools
import math

import torch
from torch import nn

from emgroup.models.chunking import chunked, in_cache_blocks
from emgroup.models.grids import canonical_centroid, pixel_size


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) as ``2 sigmoid(2 x) - 1`` (within 2e-7 of it in fp32): on an AVX2 CPU torch's sigmoid is 3.5x faster than its
    tanh (1600 x 500 floats, one thread: 0.75 against 2.6 ms), and the generator's tanh layers were a fifth of a
    spatial-VAE training step. Backward from the output, as tanh's: ``grad (1 - y^2)``."""

    @staticmethod
    def forward(ctx, x):
        y = torch.sigmoid(2 * x).mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


class Tanh(nn.Module):
    """``nn.Tanh``, through :class:`_SigmoidTanh` on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SigmoidTanh.apply(x) if x.device.type == "cpu" else torch.tanh(x)


ACTIVATIONS = {"tanh": Tanh, "leaky_relu": lambda: nn.LeakyReLU(0.2)}
#: weight of each batch in the running mean of the object's centroid (:meth:`CoordinateGenerator.follow_centroid`)
CENTRE_MOMENTUM = 0.1


#: rows (pixels of all images) per block of :class:`FourierLinear`: on the CPU a block's (rows, features) phases
#: stay in the core's cache; on CUDA blocks are large, to keep kernel launches few
BLOCK_ROWS = {"cpu": 512, "cuda": 65536}


def _product_dtype(device: torch.device) -> torch.dtype:
    """The dtype of matrix products here: autocast's when it is on for ``device``, else fp32."""
    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else torch.float32


class _FourierLinearFunction(torch.autograd.Function):
    """``cos(x W + b) A^T + c[:, None]`` for x (N, P, 2), W (2, F), b (F,), A (H, F), c (N, H) -> (N, P, H), in
    blocks of ``rows`` that the backward pass recomputes: the (N P, F) phases and features are never stored.
    Phases and cosines are fp32 (the phase spans tens of radians); the products with A run in ``dtype``."""

    @staticmethod
    def forward(ctx, x, freq, phase, weight, shift, dtype, rows):
        ctx.save_for_backward(x, freq, phase, weight)
        ctx.dtype, ctx.rows = dtype, rows
        flat, weight_t = x.reshape(-1, 2), weight.t().to(dtype)
        out = x.new_empty(len(flat), len(weight), dtype=dtype)
        with torch.autocast(x.device.type, enabled=False):
            for start in range(0, len(flat), rows):
                features = torch.cos(torch.addmm(phase, flat[start:start + rows], freq)).to(dtype)
                torch.mm(features, weight_t, out=out[start:start + rows])
        return out.view(*x.shape[:2], -1).add_(shift[:, None].to(dtype))

    @staticmethod
    def backward(ctx, grad):
        x, freq, phase, weight = ctx.saved_tensors
        flat, grad_flat = x.reshape(-1, 2), grad.reshape(-1, grad.shape[-1]).to(ctx.dtype)
        weight_low, freq_t = weight.to(ctx.dtype), freq.t()
        grad_x, grad_weight = torch.empty_like(flat), torch.zeros_like(weight)
        with torch.autocast(x.device.type, enabled=False):
            for start in range(0, len(flat), ctx.rows):
                block, grad_block = slice(start, start + ctx.rows), grad_flat[start:start + ctx.rows]
                angle = torch.addmm(phase, flat[block], freq)
                grad_weight += (grad_block.t() @ torch.cos(angle).to(ctx.dtype)).float()
                grad_angle = torch.sin(angle).mul_((grad_block @ weight_low).float()).neg_()
                torch.mm(grad_angle, freq_t, out=grad_x[block])
        return grad_x.view_as(x), None, None, grad_weight, grad.float().sum(1), None, None


class FourierLinear(nn.Module):
    """Random Fourier features of 2-D coordinates, ``cos(W x / sigma + b)`` with W ~ N(0, 1), b ~ U(0, 2 pi),
    and a linear layer on them, plus a per-image shift: (N, P, 2), (N, H) -> (N, P, H).

    Computed block by block (:class:`_FourierLinearFunction`), so memory and time do not go into the (N, P, F)
    intermediates; under autocast the products with the layer's weight run in the autocast dtype, the phases
    in fp32 (bf16 would be off by ~0.3 rad at tens of radians).
    """

    def __init__(self, n_features: int, sigma: float, hidden: int):
        super().__init__()
        self.register_buffer("freq", torch.randn(2, n_features) / sigma)
        self.register_buffer("phase", torch.rand(n_features) * 2 * math.pi)
        self.linear = nn.Linear(n_features, hidden)

    def forward(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        rows = BLOCK_ROWS.get(x.device.type, BLOCK_ROWS["cuda"])
        return _FourierLinearFunction.apply(x.float(), self.freq, self.phase, self.linear.weight,
                                            shift + self.linear.bias, _product_dtype(x.device), rows)


class CoordinateGenerator(nn.Module):
    """f(x', z): (N, P, 2) transformed coordinates and (N, k) latents -> (N, P) pixel values (logits/means).

    ``layers`` counts the hidden layers (the first is the sum of the coordinate and z branches).
    ``fourier_features`` = 0 uses a linear coordinate branch (spatial-VAE), > 0 random Fourier features with
    ``fourier_sigma`` in normalized units (TARGET-VAE uses one pixel, 2 / D).
    """

    def __init__(self, z_dim: int, hidden: int = 512, layers: int = 2, activation: str = "tanh",
                 fourier_features: int = 0, fourier_sigma: float = 0.04):
        super().__init__()
        self.hidden = hidden
        #: where the generator draws the object's centroid, normalized (x, y): added to every coordinate, so that
        #: poses are relative to the object (a running mean kept by :meth:`follow_centroid`; 0 unless followed)
        self.register_buffer("centre", torch.zeros(2))
        self.coords = (FourierLinear(fourier_features, fourier_sigma, hidden) if fourier_features
                       else nn.Linear(2, hidden))
        self.latent = nn.Linear(z_dim, hidden, bias=False) if z_dim > 0 else None
        act = ACTIVATIONS[activation]
        body = [act()]
        for _ in range(layers - 1):
            body += [nn.Linear(hidden, hidden), act()]
        self.body = nn.Sequential(*body, nn.Linear(hidden, 1))

    def follow_centroid(self, images: torch.Tensor, theta, shift_px) -> None:
        """Move :attr:`centre` a step (``CENTRE_MOMENTUM``) towards the centroid of the object in ``images``
        (N, D, D) (non-negative: means or probabilities) drawn in the pose (theta (N,) rad, shift (N, 2) px).
        Models whose poses are inferred by position (TARGET-VAE's attention, spatial-VAE's pose search) follow it:
        nothing else keeps the generator from drawing the object off the frame's origin, which would turn the
        inferred shifts with the angle."""
        box = images.shape[-1]
        with torch.no_grad():
            centroid = canonical_centroid(images.float(), theta, shift_px).mean(0) * pixel_size(box)
            self.centre.add_(centroid, alpha=CENTRE_MOMENTUM)

    def forward(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        coords = coords + self.centre
        shift = self.latent(z) if self.latent is not None else coords.new_zeros(len(coords), self.hidden)
        # per image, each layer of the body (a linear layer or an activation) keeps a (P, hidden) input for
        # backward, in the dtype of the products (bf16 under autocast)
        layer_bytes = coords.shape[1] * self.hidden * _product_dtype(coords.device).itemsize
        draw = (functools.partial(in_cache_blocks, self._draw, item_bytes=layer_bytes) if coords.device.type == "cpu"
                else self._draw)
        return chunked(draw, coords, shift, item_bytes=layer_bytes * len(self.body))

    def _draw(self, coords: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """(N, P, 2) coordinates (centred) and (N, hidden) latent branch -> (N, P) pixel values."""
        if isinstance(self.coords, FourierLinear):
            h = self.coords(coords, shift)
        else:
            h = self.coords(coords) + shift[:, None, :]
        return self.body(h).squeeze(-1)
