"""Each particle's CTF from its RELION metadata (the formula is :mod:`emgroup.ctf`)."""

import numpy as np

from emgroup.ctf import ctf_parameters, ctf_rfft
from emgroup.errors import InputError

#: RELION particle labels that carry a CTF (rlnPhaseShift and rlnCtfBfactor are optional)
DEFOCUS_LABELS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")


def has_ctf(meta) -> bool:
    """Whether a particle table (RELION labels) carries each particle's defocus."""
    return all(label in meta.columns for label in DEFOCUS_LABELS)


def stack_ctf_parameters(stack, indices=None) -> np.ndarray:
    """float64 (n, 9) CTF parameter rows (:data:`emgroup.ctf.CTF_PARAMETERS`) of a ``Stack``'s particles
    (all when ``indices`` is None), with the stack's pixel size.

    Reads ``rlnDefocusU/V/Angle`` (and ``rlnPhaseShift``, ``rlnCtfBfactor`` when present) from ``stack.meta`` and
    ``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast`` from the particle's optics group.
    """
    meta = stack.meta if indices is None else stack.meta.iloc[np.asarray(indices)]
    missing = [c for c in DEFOCUS_LABELS if c not in meta.columns]
    if missing:
        raise InputError(f"no CTF parameters in the particle table (missing {', '.join(missing)})")
    optics = stack.optics.set_index("rlnOpticsGroup") if "rlnOpticsGroup" in stack.optics.columns else stack.optics
    group = meta["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in meta.columns else optics.index[[0] * len(meta)]
    per_particle = optics.loc[group]

    def column(table, label, default):
        return table[label].to_numpy(dtype=float) if label in table.columns else default

    return ctf_parameters(stack.apix, *(meta[label].to_numpy(dtype=float) for label in DEFOCUS_LABELS),
                          column(per_particle, "rlnVoltage", 300.0),
                          column(per_particle, "rlnSphericalAberration", 2.7),
                          column(per_particle, "rlnAmplitudeContrast", 0.1), column(meta, "rlnCtfBfactor", 0.0),
                          column(meta, "rlnPhaseShift", 0.0))


def stack_ctf(stack, indices=None) -> np.ndarray:
    """float32 (n, D, D // 2 + 1) CTFs of a ``Stack``'s particles (all when ``indices`` is None)."""
    return ctf_rfft(stack.box, stack_ctf_parameters(stack, indices)).numpy()
