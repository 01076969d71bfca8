"""Group convolutions over P_r, the r in-plane rotations by multiples of 2 pi / r (r divisible by 4).

Feature maps on P_r are laid out channels-last, ``(N, H, W, r, C)``: space, rotation index k, channel (so the
1x1 group convolutions are single matrix products). Rotation k means the
angle ``alpha_k = 2 pi k / r`` in the pose convention of :mod:`emgroup.models.grids`: the lifting layer's kernel k
is ``w_k(x) = w(R(alpha_k) x)`` on pixel coordinates (x = column, y = row). Rotating an image by a quarter turn
(``torch.rot90(image, 1, (-2, -1))``, which is ``image(R(pi/2) x)`` about the array centre) therefore rotates every
feature map the same way and rolls the rotation axis by r / 4 (exactly); by 2 pi / r for r > 4 within the
interpolation error of the rotated kernels.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from emgroup.geometry import ball_mask

#: smallest kernel (px) for which the lifting convolution uses the FFT, per device type (benchmarks/throughput.py,
#: TARGET-VAE P8 training step: H100, direct wins at 22 px, FFT at 36 px by 1.1x and at 56 px by 2x in time and 2.5x
#: in memory; 2 CPU cores, direct wins at 22 px, the two are even at 36 px, FFT wins at 56 px by 1.35x:
#: throughput.json against throughput_cpu_direct_lifting.json in benchmarks/results). Under autocast on the CPU the
#: direct convolution is used at every size: its matrix product runs in bf16 (AMX, AVX512-BF16), the FFT in fp32 (2
#: cores of a Xeon with AMX, 100 px, kernel 56, batch 16, the convolution's training step: 2.3 s direct in bf16
#: against 3.1 s FFT)
FFT_MIN_KERNEL = {"cuda": 32, "cpu": 48}


def _shear(images: torch.Tensor, factors: torch.Tensor, dim: int) -> torch.Tensor:
    """Fourier (sinc) shear about the array centre of (A, M, L, L) images, one factor per leading index:
    dim -1: ``out(x, y) = in(x + f y, y)``; dim -2: ``out(x, y) = in(x, y + f x)``."""
    size = images.shape[-1]
    offsets = factors[:, None] * (torch.arange(size, device=images.device) - (size - 1) / 2)  # (A, L)
    freqs = torch.fft.fftfreq(size, device=images.device)
    phase = torch.exp(2j * math.pi * offsets[:, :, None] * freqs)  # (A, other coordinate, frequency)
    phase = phase[:, None] if dim == -1 else phase.transpose(1, 2)[:, None]
    return torch.fft.ifft(torch.fft.fft(images, dim=dim) * phase, dim=dim).real


def rotated_kernels(weight: torch.Tensor, rotations: int) -> torch.Tensor:
    """The kernels ``w(R(alpha_k) x)``, alpha_k = 2 pi k / r, about the array centre: (C_out, C_in, K, K) ->
    (r, C_out, C_in, K, K).

    The kernels are masked to their inscribed disc (so that rotation neither cuts off nor brings in corners). The
    angles in [0, pi/2) are rotated by three Fourier shears (R = S_x S_y S_x; sinc interpolation, which unlike
    bilinear does not blur, so no rotation is favoured over another) and masked again; the other angles are exact
    quarter turns of those, so a quarter turn of the stack is exactly a roll of its first axis by r / 4.
    """
    if rotations % 4:
        raise ValueError(f"the number of rotations must be a multiple of 4, not {rotations}")
    c_out, c_in, k, _ = weight.shape
    mask = ball_mask(k, centre=(k - 1) / 2, device=weight.device)  # the disc about the array centre
    pad = k // 2  # room for the sheared intermediate images
    base = F.pad(weight * mask, (pad,) * 4).reshape(1, c_out * c_in, k + 2 * pad, k + 2 * pad)
    angles = torch.arange(rotations // 4, device=weight.device, dtype=weight.dtype) * (2 * math.pi / rotations)
    # w(R x) with R = S_x(a) S_y(b) S_x(a): shear by a in x, then b in y, then a in x
    a, b = -torch.tan(angles / 2), torch.sin(angles)
    quarter = _shear(_shear(_shear(base.expand(len(angles), -1, -1, -1), a, -1), b, -2), a, -1)
    quarter = quarter[..., pad:pad + k, pad:pad + k] * mask
    turns = torch.stack([torch.rot90(quarter, q, (-2, -1)) for q in range(4)])  # (4, r/4, C_out*C_in, K, K)
    return turns.reshape(rotations, c_out, c_in, k, k)


def kernel_spectrum(weight: torch.Tensor, size: int, padding: int) -> torch.Tensor:
    """The (C_out, C_in, L, L // 2 + 1) conjugate spectrum of (C_out, C_in, K, K) kernels with which
    :func:`fft_conv2d` correlates inputs padded to L = ``size``: the kernel placed at -padding on the circle, so
    that ``out[o] = sum_j w[j] x[o + j - padding]``."""
    k = weight.shape[-1]
    kernel = torch.roll(F.pad(weight, (0, size - k, 0, size - k)), (-padding, -padding), (-2, -1))
    return torch.fft.rfft2(kernel).conj()


def fft_conv2d(images: torch.Tensor, weight: torch.Tensor, padding: int,
               spectrum: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(images, weight, padding=padding)`` (cross-correlation, zero padding) computed by FFT.

    images (N, C_in, D, D), weight (C_out, C_in, K, K) -> (N, C_out, H, H), H = D + 2 padding - K + 1. The
    transforms are of size D + 2 padding, where circular correlation has no wrap-around on the H x H outputs; the
    padding offset is folded into the (cheap) kernel transform (:func:`kernel_spectrum`; given as ``spectrum`` when
    already computed), and the inverse transform of the rows is cropped to H before the columns are transformed.
    Costs O(N C_out L^2 log L) instead of O(N C_out H^2 K^2).
    """
    d, k = images.shape[-1], weight.shape[-1]
    size, out = d + 2 * padding, d + 2 * padding - k + 1
    if out < 1:
        raise ValueError(f"kernel {k} px is larger than the padded {size} px input")
    spectrum = kernel_spectrum(weight, size, padding) if spectrum is None else spectrum
    spectrum = torch.einsum("nifx,oifx->nofx", torch.fft.rfft2(images, s=(size, size)), spectrum)
    rows = torch.fft.ifft(spectrum, dim=-2)[..., :out, :]
    return torch.fft.irfft(rows, n=size, dim=-1)[..., :out]


def unfold_conv2d(images: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """``F.conv2d(images, weight, padding=padding)`` as one matrix product of the unfolded patches, channels-last:
    images (N, C_in, D, D), weight (C_out, C_in, K, K) -> (N, H, H, C_out). On the CPU this is the direct
    convolution's fastest form here: the output needs no transposition, and the weight gradient (and bf16) runs
    at matrix-product speed, where oneDNN's bf16 convolution backward is slower than fp32."""
    patches = F.unfold(images, weight.shape[-1], padding=padding)  # (N, C_in K K, H H)
    out = patches.transpose(1, 2) @ weight.flatten(1).t()
    side = math.isqrt(out.shape[1])
    return out.view(len(images), side, side, -1)


class LiftingConv(nn.Module):
    """Lifting convolution Z^2 -> P_r: (N, C_in, D, D) -> (N, H, H, r, C_out), H = D + 2 padding - K + 1.

    One convolution with the r C_out stacked rotated kernels (:func:`rotated_kernels`) and one bias per channel
    (shared by the rotations, as equivariance requires). ``fft`` chooses :func:`fft_conv2d` over the direct
    convolution (:func:`unfold_conv2d` on the CPU, ``F.conv2d`` elsewhere); None picks it for kernels of at least
    ``FFT_MIN_KERNEL[device type]`` px (below that the direct convolution is faster), never under autocast on the
    CPU.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int, rotations: int,
                 fft: bool | None = None):
        super().__init__()
        self.rotations, self.padding, self.fft = rotations, padding, fft
        bound = 1 / math.sqrt(in_channels * kernel_size**2)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size).uniform_(
            -bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))

    def forward(self, images):
        return self.operator(images.shape[-1], images.device.type)(images)

    def operator(self, box: int, device_type: str):
        """The convolution with the current kernels as a function (N, C_in, box, box) -> (N, H, H, r, C_out), the
        rotated kernels (and, for the FFT, their spectrum) computed once: applying it to the chunks of a batch costs
        what one call on the batch does (and autograd reaches the weights through each chunk)."""
        kernels = rotated_kernels(self.weight, self.rotations).flatten(0, 1)
        min_kernel = (math.inf if device_type == "cpu" and torch.is_autocast_enabled("cpu")
                      else FFT_MIN_KERNEL.get(device_type, FFT_MIN_KERNEL["cuda"]))
        if self.fft if self.fft is not None else kernels.shape[-1] >= min_kernel:
            spectrum = kernel_spectrum(kernels, box + 2 * self.padding, self.padding)

            def convolve(images):
                return fft_conv2d(images, kernels, self.padding, spectrum).permute(0, 2, 3, 1)
        elif device_type == "cpu":
            def convolve(images):
                return unfold_conv2d(images, kernels, self.padding)
        else:  # channels-last output, so the permute is a view
            def convolve(images):
                out = F.conv2d(images.contiguous(memory_format=torch.channels_last),
                               kernels.contiguous(memory_format=torch.channels_last), padding=self.padding)
                return out.permute(0, 2, 3, 1)

        def lifted(images):
            out = convolve(images)
            n, h, w, _ = out.shape
            return out.reshape(n, h, w, self.rotations, -1) + self.bias.to(out.dtype)
        return lifted


class GroupConv1x1(nn.Module):
    """1x1 group convolution P_r -> P_r: (N, H, W, r, C_in) -> (N, H, W, r, C_out).

    Each output rotation k mixes the channels of the ``span`` (odd) rotations ``k - span // 2 ... k + span // 2``
    (cyclically) with weights that depend only on the offset, i.e. a 3-D convolution of kernel (span, 1, 1) with
    circular padding over the rotation axis; span = 1 is TARGET-VAE's pointwise 3-D convolution. Computed as one
    matrix product over the channels of the stacked offsets.
    """

    def __init__(self, in_channels: int, out_channels: int, span: int = 1):
        super().__init__()
        if span % 2 == 0:
            raise ValueError(f"the rotation span of a group convolution must be odd, not {span}")
        self.span = span
        self.linear = nn.Linear(span * in_channels, out_channels)

    def forward(self, x):
        if self.span > 1:  # channels of rotations k + o for o = -span // 2 ... span // 2
            x = torch.cat([torch.roll(x, -o, -2) for o in range(-(self.span // 2), self.span // 2 + 1)], -1)
        return self.linear(x)
