"""The contrast transfer function in RELION's convention, on the ``torch.fft.rfft2`` grid of a ``D x D`` image:
shared maths that every layer may import (reading a particle's CTF from a STAR is :mod:`emgroup.data.ctf`).

``CTF(s) = sin(gamma(s)) * exp(-B |s|^2 / 4)`` (RELION's ``-sin(chi)``, chi = -gamma) with
``gamma = pi lambda dz(s) |s|^2 - pi/2 Cs lambda^3 |s|^4 + phase_shift + atan(w / sqrt(1 - w^2))`` for the
underfocus ``dz(s) = (dU + dV)/2 + (dU - dV)/2 cos(2 (alpha(s) - angle))`` (positive Å), spatial frequency ``s``
in 1/Å, ``alpha(s)`` the angle of ``s`` from the x (column) axis towards y (rows), ``w`` the amplitude contrast;
protein density stays positive (white) at low frequency, as in RELION's images.
Pinned by a test against ``relion_project --ctf``.

A particle's CTF is one row of :data:`CTF_PARAMETERS`; :func:`ctf_rfft` turns a batch of rows into CTFs on the
device the rows are on (models compute each training batch's CTFs there).
"""

import numpy as np
import torch

#: the columns of a CTF parameter row, with units
CTF_PARAMETERS = ("defocus_u_A", "defocus_v_A", "defocus_angle_deg", "voltage_kV", "cs_mm", "amplitude_contrast",
                  "bfactor_A2", "phase_shift_deg", "pixel_size_A")
ANGLE = CTF_PARAMETERS.index("defocus_angle_deg")


def electron_wavelength(voltage_kv):
    """Relativistic electron wavelength in Å for an accelerating voltage in kV (array or tensor)."""
    volts = voltage_kv * 1e3
    return 12.2643247 / (volts * (1.0 + volts * 0.978466e-6)) ** 0.5


def ctf_parameters(apix, defocus_u, defocus_v, angle, voltage, cs, amplitude_contrast, bfactor=0.0,
                   phase_shift=0.0) -> np.ndarray:
    """float64 (N, 9) rows of :data:`CTF_PARAMETERS` from per-particle arrays (N,) or scalars (broadcast): pixel
    size in Å, defocus_u, defocus_v in Å (underfocus positive), angle (astigmatism) in degrees, voltage in kV, cs in
    mm, amplitude_contrast in [0, 1), bfactor in Å^2, phase_shift in degrees."""
    columns = np.broadcast_arrays(*(np.atleast_1d(np.asarray(p, dtype=float)) for p in (
        defocus_u, defocus_v, angle, voltage, cs, amplitude_contrast, bfactor, phase_shift, apix)))
    return np.stack(columns, axis=1)


def ctf_rfft(box: int, parameters) -> torch.Tensor:
    """float32 (N, D, D // 2 + 1) CTFs on the ``rfft2`` grid of a ``box x box`` image, for parameter rows
    (N, 9) (:data:`CTF_PARAMETERS`; an array or a tensor: the result is on the tensor's device). Computed in
    float64 (the phase reaches hundreds of radians at high defocus)."""
    p = torch.as_tensor(parameters).to(torch.float64)
    du, dv, angle, voltage, cs, w, bfactor, phase_shift, apix = (p[:, i, None, None] for i in range(9))
    sy = torch.fft.fftfreq(box, dtype=torch.float64, device=p.device)[:, None] / apix
    sx = torch.fft.rfftfreq(box, dtype=torch.float64, device=p.device)[None, :] / apix
    s2 = sx**2 + sy**2
    defocus = 0.5 * (du + dv) + 0.5 * (du - dv) * torch.cos(2.0 * (torch.atan2(sy, sx) - torch.deg2rad(angle)))
    wavelength = electron_wavelength(voltage)
    gamma = (torch.pi * wavelength * defocus * s2 - 0.5 * torch.pi * (cs * 1e7) * wavelength**3 * s2**2
             + torch.deg2rad(phase_shift) + torch.atan(w / torch.sqrt(1.0 - w**2)))
    return (torch.sin(gamma) * torch.exp(-bfactor * s2 / 4.0)).float()


def rotate_ctf_parameters(parameters: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """CTF rows (N, 9) of images resampled by ``out(x) = in(R(theta) x)`` (theta (N,) rad, the in-plane pose
    convention): the astigmatism angle turns by -theta; the rest is rotation invariant."""
    out = parameters.clone()
    out[:, ANGLE] = parameters[:, ANGLE] - torch.rad2deg(theta).to(parameters.dtype)
    return out


def apply_ctf(images: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Images (N, D, D) filtered by CTFs (N, D, D // 2 + 1) on their ``rfft2`` grid; FFTs in fp32."""
    with torch.autocast(images.device.type, enabled=False):
        return torch.fft.irfft2(torch.fft.rfft2(images.float()) * ctf, s=images.shape[-2:])
