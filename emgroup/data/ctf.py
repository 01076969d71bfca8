"""The contrast transfer function in RELION's convention, on the ``numpy.fft.rfft2`` grid of a ``D x D`` image.

``CTF(s) = sin(gamma(s)) * exp(-B |s|^2 / 4)`` (RELION's ``-sin(chi)``, chi = -gamma) with
``gamma = pi lambda dz(s) |s|^2 - pi/2 Cs lambda^3 |s|^4 + phase_shift + atan(w / sqrt(1 - w^2))`` for the
underfocus ``dz(s) = (dU + dV)/2 + (dU - dV)/2 cos(2 (alpha(s) - angle))`` (positive Å), spatial frequency ``s``
in 1/Å, ``alpha(s)`` the angle of ``s`` from the x (column) axis towards y (rows), ``w`` the amplitude contrast;
protein density stays positive (white) at low frequency, as in RELION's images.
Pinned by a test against ``relion_project --ctf``.
"""

import numpy as np

from emgroup.errors import InputError


def electron_wavelength(voltage_kv) -> np.ndarray:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV."""
    volts = np.asarray(voltage_kv, dtype=float) * 1e3
    return 12.2643247 / np.sqrt(volts * (1.0 + volts * 0.978466e-6))


def ctf_rfft(box: int, apix: float, defocus_u, defocus_v, angle, voltage, cs, amplitude_contrast,
             bfactor=0.0, phase_shift=0.0) -> np.ndarray:
    """float32 (N, D, D // 2 + 1) CTFs on the ``numpy.fft.rfft2`` grid of a ``box x box`` image.

    Per-particle arrays (N,) or scalars: defocus_u, defocus_v in Å (underfocus positive), angle (astigmatism) in
    degrees, voltage in kV, cs in mm, amplitude_contrast in [0, 1), bfactor in Å^2, phase_shift in degrees.
    """
    params = np.broadcast_arrays(*(np.atleast_1d(np.asarray(p, dtype=float)) for p in (
        defocus_u, defocus_v, angle, voltage, cs, amplitude_contrast, bfactor, phase_shift)))
    du, dv, angle, voltage, cs, w, bfactor, phase_shift = (p[:, None, None] for p in params)
    sy = np.fft.fftfreq(box, d=apix)[:, None]
    sx = np.fft.rfftfreq(box, d=apix)[None, :]
    s2 = sx**2 + sy**2
    defocus = 0.5 * (du + dv) + 0.5 * (du - dv) * np.cos(2.0 * (np.arctan2(sy, sx) - np.radians(angle)))
    wavelength = electron_wavelength(voltage)
    cs_angstrom = cs * 1e7
    gamma = (np.pi * wavelength * defocus * s2 - 0.5 * np.pi * cs_angstrom * wavelength**3 * s2**2
             + np.radians(phase_shift) + np.arctan(w / np.sqrt(1.0 - w**2)))
    return (np.sin(gamma) * np.exp(-bfactor * s2 / 4.0)).astype(np.float32)


def stack_ctf(stack, indices=None) -> np.ndarray:
    """float32 (n, D, D // 2 + 1) CTFs of a ``ParticleStack``'s particles (all when ``indices`` is None).

    Reads ``rlnDefocusU/V/Angle`` (and ``rlnPhaseShift``, ``rlnCtfBfactor`` when present) from ``stack.meta`` and
    ``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast`` from the particle's optics group.
    """
    meta = stack.meta if indices is None else stack.meta.iloc[np.asarray(indices)]
    missing = [c for c in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle") if c not in meta.columns]
    if missing:
        raise InputError(f"no CTF parameters in the particle table (missing {', '.join(missing)})")
    optics = stack.optics.set_index("rlnOpticsGroup") if "rlnOpticsGroup" in stack.optics.columns else stack.optics
    group = meta["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in meta.columns else optics.index[[0] * len(meta)]
    per_particle = optics.loc[group]

    def column(table, label, default):
        return table[label].to_numpy(dtype=float) if label in table.columns else default

    return ctf_rfft(stack.box, stack.apix, meta["rlnDefocusU"].to_numpy(dtype=float),
                    meta["rlnDefocusV"].to_numpy(dtype=float), meta["rlnDefocusAngle"].to_numpy(dtype=float),
                    column(per_particle, "rlnVoltage", 300.0), column(per_particle, "rlnSphericalAberration", 2.7),
                    column(per_particle, "rlnAmplitudeContrast", 0.1), column(meta, "rlnCtfBfactor", 0.0),
                    column(meta, "rlnPhaseShift", 0.0))
