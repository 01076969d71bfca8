"""RELION STAR particle files through ``starfile``: read RELION 3.0 and 3.1+, write RELION 3.1.

A particles table is a DataFrame with RELION labels as columns; an optics table has one row per optics group.
Pixel sizes in Å, voltage in kV, spherical aberration in mm, shifts (``rlnOriginXAngst/YAngst``) in Å.
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from emgroup.errors import InputError
from emgroup.io.atomic import atomic_path

#: values written when the input states none: 300 kV, 2.7 mm, amplitude contrast 0.1
DEFAULT_OPTICS = {"rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1}
OPTICS_COLUMNS = ["rlnOpticsGroup", "rlnOpticsGroupName", "rlnImagePixelSize", "rlnImageSize",
                  "rlnImageDimensionality", *DEFAULT_OPTICS]
_INTEGER_OPTICS = ["rlnOpticsGroup", "rlnImageSize", "rlnImageDimensionality"]
#: particle columns that must hold finite numbers when present: CTF parameters and poses (degrees, Å)
FINITE_COLUMNS = ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor", "rlnAngleRot",
                  "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]


def optics_table(apix: float, box: int, voltage: float = 300.0, cs: float = 2.7,
                 amplitude_contrast: float = 0.1) -> pd.DataFrame:
    """A one-group optics table: pixel size ``apix`` (Å), ``box`` (px), voltage (kV), Cs (mm), amplitude contrast."""
    return pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnImagePixelSize": [apix],
                         "rlnImageSize": [box], "rlnImageDimensionality": [2], "rlnVoltage": [voltage],
                         "rlnSphericalAberration": [cs], "rlnAmplitudeContrast": [amplitude_contrast]})


def read_star(path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(particles, optics)`` from a RELION STAR file; every particle column is kept.

    RELION 3.1+: the ``optics`` table and the other table (``particles``). RELION 3.0 (one table): the optics
    table is synthesised from the per-particle ``rlnVoltage``/``rlnSphericalAberration``/``rlnAmplitudeContrast``
    (defaults where absent) and the pixel size ``rlnDetectorPixelSize * 1e4 / rlnMagnification`` (NaN when
    unknown), one group per distinct combination; ``rlnOriginX/Y`` (px) become ``rlnOriginX/YAngst`` when the
    pixel size is known. ``rlnImagePixelSize``/``rlnImageSize`` are NaN when the file does not say (fill them
    from the images).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as err:  # starfile raises whatever its parser meets; the message says what
        raise InputError(f"not a readable STAR file ({err})", path) from None
    tables = {name: table for name, table in blocks.items() if isinstance(table, pd.DataFrame)}
    if "optics" in tables:
        others = [name for name in tables if name != "optics"]
        if not others:
            raise InputError("STAR file has an optics table but no particles table", path)
        particles = tables["particles" if "particles" in tables else others[0]].copy()
        optics = tables["optics"].copy()
        for column, value in DEFAULT_OPTICS.items():
            if column not in optics:
                optics[column] = value
        if "rlnOpticsGroup" not in particles:
            particles["rlnOpticsGroup"] = int(optics["rlnOpticsGroup"].iloc[0])
    elif tables:
        particles, optics = _split_relion30(next(iter(tables.values())).copy(), path)
    else:
        raise InputError("STAR file holds no table", path)
    for column in ("rlnImagePixelSize", "rlnImageSize"):
        if column not in optics:
            optics[column] = np.nan
    particles, optics = particles.reset_index(drop=True), optics.reset_index(drop=True)
    check_tables(particles, optics, path)
    return particles, optics.astype({"rlnImagePixelSize": float, **{c: float for c in DEFAULT_OPTICS}})


def check_tables(particles: pd.DataFrame, optics: pd.DataFrame, path) -> None:
    """:class:`InputError` naming ``path`` for values no microscope gives: a pixel size that is not a positive
    number (NaN means unknown and passes), a voltage that is not positive, a Cs or amplitude contrast out of range
    (0 <= w < 1), a particle in an optics group the optics table does not define, or a CTF/pose column
    (:data:`FINITE_COLUMNS`) holding NaN, Inf or text."""
    limits = {"rlnImagePixelSize": ("a pixel size in Å", lambda v: np.isnan(v) | (v > 0) & np.isfinite(v)),
              "rlnVoltage": ("a voltage in kV", lambda v: (v > 0) & np.isfinite(v)),
              "rlnSphericalAberration": ("a spherical aberration in mm", np.isfinite),
              "rlnAmplitudeContrast": ("an amplitude contrast", lambda v: (v >= 0) & (v < 1))}
    groups = optics["rlnOpticsGroup"] if "rlnOpticsGroup" in optics else pd.Series(np.arange(1, len(optics) + 1))
    for column, (meaning, valid) in limits.items():
        values = pd.to_numeric(optics[column], errors="coerce").to_numpy(dtype=float)
        bad = ~valid(values)
        if bad.any():
            first = int(np.argmax(bad))
            raise InputError(f"optics group {groups.iloc[first]}: {column} {optics[column].iloc[first]} is not "
                             f"{meaning}", path)
    if "rlnOpticsGroup" in particles:
        undefined = ~particles["rlnOpticsGroup"].isin(groups)
        if undefined.any():
            first = int(np.argmax(undefined))
            raise InputError(f"particle {first + 1} is in optics group {particles['rlnOpticsGroup'].iloc[first]}, "
                             f"which the optics table does not define (it has {', '.join(map(str, groups))})", path)
    for column in FINITE_COLUMNS:
        if column in particles:
            bad = ~np.isfinite(pd.to_numeric(particles[column], errors="coerce").to_numpy(dtype=float))
            if bad.any():
                first = int(np.argmax(bad))
                raise InputError(f"particle {first + 1} has {column} {particles[column].iloc[first]} (not a number)",
                                 path)


def _split_relion30(particles: pd.DataFrame, path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RELION 3.0 pixel size (detector pixel / magnification) and shifts in Å, then :func:`split_optics`;
    :class:`InputError` naming ``path`` for a detector pixel or magnification that is not a positive number."""
    if {"rlnDetectorPixelSize", "rlnMagnification"} <= set(particles):
        for column in ("rlnDetectorPixelSize", "rlnMagnification"):
            values = pd.to_numeric(particles[column], errors="coerce").to_numpy(dtype=float)
            bad = ~((values > 0) & np.isfinite(values))
            if bad.any():
                first = int(np.argmax(bad))
                raise InputError(f"particle {first + 1} has {column} {particles[column].iloc[first]}: the pixel size "
                                 "(rlnDetectorPixelSize µm * 1e4 / rlnMagnification) would not be a positive number",
                                 path)
        particles["rlnImagePixelSize"] = particles.pop("rlnDetectorPixelSize") * 1e4 / particles.pop("rlnMagnification")
        for axis in "XY":
            if f"rlnOrigin{axis}" in particles:
                particles[f"rlnOrigin{axis}Angst"] = particles.pop(f"rlnOrigin{axis}") * particles["rlnImagePixelSize"]
    return split_optics(particles)


def split_optics(particles: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Move per-particle optics columns (pixel size, image size, voltage, Cs, amplitude contrast) into an optics
    table with one group per distinct combination; absent ones get :data:`DEFAULT_OPTICS` (size/pixel size: NaN)."""
    columns = {"rlnImagePixelSize": np.nan, "rlnImageSize": np.nan, **DEFAULT_OPTICS}
    particles = particles.assign(**{c: v for c, v in columns.items() if c not in particles})
    keys = list(columns)
    optics = particles[keys].drop_duplicates().reset_index(drop=True)
    optics.insert(0, "rlnOpticsGroup", np.arange(1, len(optics) + 1))
    optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]])
    group = particles[keys].merge(optics, on=keys, how="left")["rlnOpticsGroup"].to_numpy()
    return particles.drop(columns=keys).assign(rlnOpticsGroup=group), optics


def join_optics(particles: pd.DataFrame, optics: pd.DataFrame) -> pd.DataFrame:
    """Particles with their optics group's columns added (the inverse of :func:`split_optics`)."""
    extra = [c for c in optics if c not in particles or c == "rlnOpticsGroup"]
    return particles.merge(optics[extra], on="rlnOpticsGroup", how="left")


def write_star(path, particles: pd.DataFrame, optics: pd.DataFrame) -> None:
    """Write RELION 3.1 style (``data_optics`` + ``data_particles``), atomically.

    Missing voltage/Cs/amplitude contrast are filled with :data:`DEFAULT_OPTICS`; the optics table must
    already carry the group, pixel size and image size. Particle columns are written as given, each label once.
    """
    optics = optics.copy()
    for column, value in DEFAULT_OPTICS.items():
        if column not in optics:
            optics[column] = value
    if "rlnOpticsGroupName" not in optics:
        optics["rlnOpticsGroupName"] = [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]]
    if "rlnImageDimensionality" not in optics:
        optics["rlnImageDimensionality"] = 2
    missing = [c for c in OPTICS_COLUMNS if c not in optics or optics[c].isna().any()]
    if missing:
        raise ValueError(f"optics table lacks {missing}")
    twice = sorted(set(particles.columns[particles.columns.duplicated()]))
    if twice:  # RELION refuses the file ("more columns than the number of labels")
        raise ValueError(f"particles table has labels twice: {twice}")
    optics[_INTEGER_OPTICS] = optics[_INTEGER_OPTICS].astype(int)
    optics = optics[OPTICS_COLUMNS + [c for c in optics if c not in OPTICS_COLUMNS]]
    with atomic_path(path) as tmp:
        starfile.write({"optics": optics, "particles": particles}, tmp, float_format="%.9g")


def relative_to_cwd(path) -> str:
    """``path`` as a STAR file's image or micrograph name: relative to the working directory, from which RELION
    (run in the project directory) resolves it."""
    return os.path.relpath(Path(path).resolve(), Path.cwd())


def format_image_name(index0, path):
    """RELION image name ``"000001@path"`` from a 0-based index; both may be arrays (then an array of str)."""
    names = np.char.add(np.char.add(np.char.zfill(np.char.mod("%d", np.asarray(index0) + 1), 6), "@"),
                        np.asarray(path, dtype=str))
    return str(names) if names.ndim == 0 else names


def parse_image_name(name):
    """``(index0, path)`` from ``"000001@path"`` (a bare path means image 0); arrays in, arrays out.

    Raises ``ValueError`` when the part before ``@`` is not a positive integer.
    """
    parts = np.char.partition(np.asarray(name, dtype=str), "@")
    has_index = parts[..., 1] == "@"
    paths = np.where(has_index, parts[..., 2], parts[..., 0])
    index0 = np.char.strip(np.where(has_index, parts[..., 0], "1")).astype(np.int64) - 1
    if (index0 < 0).any():
        raise ValueError("image numbers in rlnImageName start at 1")
    return (int(index0), str(paths)) if index0.ndim == 0 else (index0, paths)
