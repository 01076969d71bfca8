"""cryoSPARC particle ``.cs`` files: numpy structured arrays (what cryoSPARC writes, and cryosparc-tools'
``Dataset.save`` by default), read and written with numpy alone and converted to/from RELION particles + optics
tables.

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

Written back (:func:`write_cs`) with the input's records, every field and ``uid`` stays as it came and only what
emgroup inferred is replaced (``alignments2D/*`` or ``alignments3D/*``: pose, shift, class, psize_A), so cryoSPARC
joins the result to its particles by ``uid``; without records (a STAR or MRC input) new records are made, their
``uid`` a hash of ``blob/path`` and ``blob/idx`` (the same particle gets the same uid in every run).
"""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from emgroup.errors import InputError
from emgroup.io.atomic import atomic_path
from emgroup.io.star import check_tables, format_image_name, join_optics, parse_image_name, split_optics

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
#: the first bytes of cryosparc-tools' compressed stream format (``Dataset.save(format=CSDAT_FORMAT)``)
_CSDAT_MAGIC = b"\x95CSDAT"


def read_cs(path) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """``(particles, optics, records)`` of a cryoSPARC particles ``.cs`` file: tables with RELION labels (checked as
    :func:`emgroup.io.star.check_tables` checks a STAR file's) and the file's records as they are (a 1-D numpy
    structured array, one row per particle)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    with open(path, "rb") as file:
        if file.read(len(_CSDAT_MAGIC)) == _CSDAT_MAGIC:
            raise InputError("cryosparc-tools' compressed .cs stream format; save it in the numpy format cryoSPARC "
                             "writes (Dataset.load(path).save(new_path))", path)
    try:
        records = np.load(path, allow_pickle=False)  # no pickles: they would run code from the file
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"not a readable cryoSPARC .cs file ({err})", path) from None
    if not isinstance(records, np.ndarray) or records.dtype.names is None or records.ndim != 1:
        raise InputError("not a cryoSPARC .cs file (not a table of records)", path)
    if not {"blob/path", "blob/idx"} <= set(records.dtype.names):
        raise InputError("no blob/path and blob/idx fields (not a particles file)", path)
    particles, optics = particle_tables(records)
    check_tables(particles, optics, path)
    return particles, optics, records


def particle_tables(records: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(particles, optics)`` tables with RELION labels from cryoSPARC particle records (see the module docstring)."""
    fields = set(records.dtype.names)
    paths = np.char.lstrip(_text(records["blob/path"]), ">")
    particles = pd.DataFrame({"rlnImageName": format_image_name(records["blob/idx"].astype(np.int64), paths)})
    for field, (label, factor) in _SCALARS.items():
        if field in fields:
            particles[label] = records[field].astype(np.float64) * factor
    if "blob/shape" in fields:
        particles["rlnImageSize"] = records["blob/shape"][:, 0].astype(np.int64)
    kind = "alignments3D" if "alignments3D/pose" in fields else "alignments2D"
    if kind == "alignments3D":
        particles[_EULERS] = Rotation.from_rotvec(records["alignments3D/pose"]).as_euler("ZYZ", degrees=True)
    elif "alignments2D/pose" in fields:
        particles["rlnAnglePsi"] = np.rad2deg(records["alignments2D/pose"].astype(np.float64))
    if f"{kind}/shift" in fields and "rlnImagePixelSize" in particles:
        particles[_ORIGINS] = records[f"{kind}/shift"] * particles[["rlnImagePixelSize"]].to_numpy()
    if f"{kind}/class" in fields:
        particles["rlnClassNumber"] = records[f"{kind}/class"].astype(np.int64) + 1
    return split_optics(particles)


def write_cs(path, particles: pd.DataFrame, optics: pd.DataFrame, records: np.ndarray | None = None) -> None:
    """Write RELION-labelled particles (with their optics groups) as a cryoSPARC ``.cs`` file, atomically.

    ``alignments3D/*`` when all three Euler angles exist (else ``alignments2D/*`` when ``rlnAnglePsi`` does): pose,
    shift (px), class (0-based), psize_A. With ``records`` (the input's, one per row of ``particles``, same order)
    everything else is theirs, ``uid`` included; without, new records get ``uid`` (hashed from the image),
    ``blob/*`` and the ``ctf/*`` fields whose RELION columns exist.
    """
    table = join_optics(particles, optics)
    apix = table["rlnImagePixelSize"].to_numpy()
    kind = "alignments3D" if set(_EULERS) <= set(table) else "alignments2D" if "rlnAnglePsi" in table else None
    columns = {}
    if kind == "alignments3D":
        rotation = Rotation.from_euler("ZYZ", table[_EULERS].to_numpy(), degrees=True)
        columns[f"{kind}/pose"] = ("f4", rotation.as_rotvec())
    elif kind == "alignments2D":
        columns[f"{kind}/pose"] = ("f4", np.deg2rad(table["rlnAnglePsi"].to_numpy()))
    if kind and set(_ORIGINS) <= set(table):
        columns[f"{kind}/shift"] = ("f4", table[_ORIGINS].to_numpy() / apix[:, None])
    if kind and "rlnClassNumber" in table:
        columns[f"{kind}/class"] = ("u4", table["rlnClassNumber"].to_numpy() - 1)
    if kind:
        columns[f"{kind}/psize_A"] = ("f4", apix)
    if records is None:
        index0, paths = parse_image_name(table["rlnImageName"].to_numpy(dtype=str))
        columns = {"uid": ("u8", _uids(paths, index0)), "blob/path": ("S", np.char.encode(paths, "utf-8")),
                   "blob/idx": ("u4", index0),
                   "blob/shape": ("u4", np.repeat(table[["rlnImageSize"]].to_numpy(), 2, axis=1)),
                   **{field: ("f4", table[label].to_numpy() / factor)
                      for field, (label, factor) in _SCALARS.items() if label in table}, **columns}
    elif len(records) != len(table):
        raise ValueError(f"{len(records)} cryoSPARC records for {len(table)} particles")
    out = _with_fields(records, len(table), columns)
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.save(file, out, allow_pickle=False)


def _with_fields(records: np.ndarray | None, n: int, columns: dict) -> np.ndarray:
    """``n`` records: a copy of ``records`` (or none) in which each ``name: (dtype, values)`` of ``columns`` is set;
    an existing field keeps its place and type, a new one is added at the end with ``dtype`` (``"S"``: as wide as
    the longest value)."""
    values = {name: np.asarray(value) for name, (_, value) in columns.items()}
    kept = [] if records is None else records.dtype.descr
    added = [(name, f"S{max(1, values[name].dtype.itemsize)}" if dtype == "S" else dtype, values[name].shape[1:])
             for name, (dtype, _) in columns.items() if records is None or name not in records.dtype.names]
    out = np.zeros(n, dtype=np.dtype(kept + added))
    for name in [] if records is None else records.dtype.names:
        out[name] = records[name]
    for name, value in values.items():
        out[name] = value
    return out


def _uids(paths: np.ndarray, index0: np.ndarray) -> np.ndarray:
    """A 64-bit uid per particle: a hash of its stack path and 0-based index."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{p}\0{i}".encode(), digest_size=8).digest(), "little")
                     for p, i in zip(paths, index0)], dtype=np.uint64)


def _text(values: np.ndarray) -> np.ndarray:
    """A cryoSPARC string field (fixed-width bytes, as cryoSPARC writes them, or str) as str."""
    return np.char.decode(values, "utf-8") if values.dtype.kind == "S" else values.astype(str)
