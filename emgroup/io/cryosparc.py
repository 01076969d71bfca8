"""cryoSPARC particle ``.cs`` files through ``cryosparc-tools``, converted to/from RELION particles + optics tables.

Field mapping (cryoSPARC -> RELION 3.1), as pyem's ``csparc2star`` does it:

* ``blob/path`` + ``blob/idx`` -> ``rlnImageName`` (a leading ``>`` of a project-relative path is dropped),
  ``blob/psize_A`` -> ``rlnImagePixelSize``, ``blob/shape`` -> ``rlnImageSize`` (optics);
* ``ctf/accel_kv``, ``ctf/cs_mm``, ``ctf/amp_contrast`` -> optics ``rlnVoltage``, ``rlnSphericalAberration``,
  ``rlnAmplitudeContrast``; ``ctf/df1_A``, ``ctf/df2_A`` -> ``rlnDefocusU/V`` (Å); ``ctf/df_angle_rad``,
  ``ctf/phase_shift_rad`` -> ``rlnDefocusAngle``, ``rlnPhaseShift`` (degrees); ``ctf/bfactor`` -> ``rlnCtfBfactor``;
* ``alignments3D/pose`` (rotation vector, rad) -> ``rlnAngleRot/Tilt/Psi`` (ZYZ, degrees): RELION's matrix
  ``A(rot, tilt, psi)`` is the transpose of the rotation-vector matrix; ``alignments2D/pose`` (rad) ->
  ``rlnAnglePsi`` (degrees); ``alignments*/shift`` (px) -> ``rlnOriginX/YAngst`` (Å); ``alignments*/class``
  (0-based) -> ``rlnClassNumber`` (1-based).

Other fields (and cryoSPARC's ``uid``) are not carried; :func:`write_cs` makes new uids.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from cryosparc.dataset import Dataset
from scipy.spatial.transform import Rotation

from emgroup.errors import InputError
from emgroup.io.atomic import atomic_path
from emgroup.io.star import format_image_name, join_optics, parse_image_name, split_optics

#: per-particle scalar fields: cs name -> (RELION label, factor from cs units to RELION units)
_SCALARS = {
    "blob/psize_A": ("rlnImagePixelSize", 1.0),
    "ctf/accel_kv": ("rlnVoltage", 1.0),
    "ctf/cs_mm": ("rlnSphericalAberration", 1.0),
    "ctf/amp_contrast": ("rlnAmplitudeContrast", 1.0),
    "ctf/df1_A": ("rlnDefocusU", 1.0),
    "ctf/df2_A": ("rlnDefocusV", 1.0),
    "ctf/df_angle_rad": ("rlnDefocusAngle", 180 / np.pi),
    "ctf/phase_shift_rad": ("rlnPhaseShift", 180 / np.pi),
    "ctf/bfactor": ("rlnCtfBfactor", 1.0),
}
_EULERS = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
_ORIGINS = ["rlnOriginXAngst", "rlnOriginYAngst"]


def read_cs(path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(particles, optics)`` tables with RELION labels from a cryoSPARC particles ``.cs`` file."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        dataset = Dataset.load(path)
    except Exception as err:  # cryosparc-tools raises several types for a bad file; its message says what
        raise InputError(f"not a readable cryoSPARC .cs file ({err})", path) from None
    fields = set(dataset.fields())
    if not {"blob/path", "blob/idx"} <= fields:
        raise InputError("no blob/path and blob/idx fields (not a particles file)", path)
    paths = np.char.lstrip(dataset["blob/path"].astype(str), ">")
    particles = pd.DataFrame({"rlnImageName": format_image_name(dataset["blob/idx"].astype(np.int64), paths)})
    for field, (label, factor) in _SCALARS.items():
        if field in fields:
            particles[label] = dataset[field].astype(np.float64) * factor
    if "blob/shape" in fields:
        particles["rlnImageSize"] = dataset["blob/shape"][:, 0].astype(np.int64)
    kind = "alignments3D" if "alignments3D/pose" in fields else "alignments2D"
    if kind == "alignments3D":
        particles[_EULERS] = Rotation.from_rotvec(dataset["alignments3D/pose"]).as_euler("ZYZ", degrees=True)
    elif "alignments2D/pose" in fields:
        particles["rlnAnglePsi"] = np.rad2deg(dataset["alignments2D/pose"].astype(np.float64))
    if f"{kind}/shift" in fields and "rlnImagePixelSize" in particles:
        particles[_ORIGINS] = dataset[f"{kind}/shift"] * particles[["rlnImagePixelSize"]].to_numpy()
    if f"{kind}/class" in fields:
        particles["rlnClassNumber"] = dataset[f"{kind}/class"].astype(np.int64) + 1
    return split_optics(particles)


def write_cs(path, particles: pd.DataFrame, optics: pd.DataFrame) -> None:
    """Write RELION-labelled particles (with their optics groups) as a cryoSPARC ``.cs`` file, atomically.

    Writes the ``blob/*`` fields, the ``ctf/*`` fields whose RELION columns exist, and ``alignments3D/*`` when
    all three Euler angles exist (else ``alignments2D/*`` when ``rlnAnglePsi`` does).
    """
    table = join_optics(particles, optics)
    index0, paths = parse_image_name(table["rlnImageName"].to_numpy(dtype=str))
    apix = table["rlnImagePixelSize"].to_numpy()
    kind = "alignments3D" if set(_EULERS) <= set(table) else "alignments2D" if "rlnAnglePsi" in table else None
    columns = {"blob/path": ("O", paths), "blob/idx": ("u4", index0),
               "blob/shape": ("u4", np.repeat(table[["rlnImageSize"]].to_numpy(), 2, axis=1))}
    columns |= {field: ("f4", table[label].to_numpy() / factor)
                for field, (label, factor) in _SCALARS.items() if label in table}
    if kind == "alignments3D":
        rotation = Rotation.from_euler("ZYZ", table[_EULERS].to_numpy(), degrees=True)
        columns[f"{kind}/pose"] = ("f4", rotation.as_rotvec())
    elif kind == "alignments2D":
        columns[f"{kind}/pose"] = ("f4", np.deg2rad(table["rlnAnglePsi"].to_numpy()))
    if kind and set(_ORIGINS) <= set(table):
        columns[f"{kind}/shift"] = ("f4", table[_ORIGINS].to_numpy() / apix[:, None])
    if kind and "rlnClassNumber" in table:
        columns[f"{kind}/class"] = ("u4", table["rlnClassNumber"].to_numpy() - 1)
    dataset = Dataset.allocate(len(table), [(name, dtype, np.shape(values)[1:]) for name, (dtype, values)
                                            in columns.items()])
    for name, (_, values) in columns.items():
        dataset[name] = values
    with atomic_path(path) as tmp:
        dataset.save(tmp)
