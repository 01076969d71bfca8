"""Builders of the files other software writes and of hostile input, for the tests (no file is copied from
anywhere: each is made here with numpy, mrcfile and starfile, in the shape the real ones have)."""

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

#: byte offsets in an MRC header: the ID string 'MAP ' and the machine stamp
MAP_ID, MACHINE_STAMP = 208, 212


def images(n: int = 6, box: int = 16, seed: int = 0) -> np.ndarray:
    """float32 (n, box, box) noise images with a bright disc, so normalization has a background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:box, :box] - box // 2
    disc = (x**2 + y**2 < (box // 4) ** 2).astype(np.float32)
    return (disc[None] * 3 + rng.normal(size=(n, box, box))).astype(np.float32)


def mrc_without_id(path, data: np.ndarray, apix: float = 1.0) -> Path:
    """An MRC file as older cryoDRGN and other tools wrote it: a valid header and data, but bytes 208-215 (the ID
    string 'MAP ' and the machine stamp) zero."""
    path = Path(path)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.asarray(data, dtype=np.float32))
        mrc.voxel_size = apix
    raw = bytearray(path.read_bytes())
    raw[MAP_ID:MACHINE_STAMP + 4] = bytes(8)
    path.write_bytes(bytes(raw))
    return path


def mrc_file(path, data: np.ndarray, apix: float = 1.0, volume: bool = False) -> Path:
    """``data`` written by mrcfile as it is (any dtype mrcfile takes), as an image stack or a volume (space group 1)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if data.ndim == 3:
            mrc.set_volume() if volume else mrc.set_image_stack()
        mrc.voxel_size = apix
    return path


def optics(apix: float = 1.5, box: int = 16, groups: int = 1, **columns) -> pd.DataFrame:
    """A RELION 3.1 optics table of ``groups`` groups at ``apix`` Å and ``box`` px; ``columns`` replace values
    (scalars or one per group)."""
    table = pd.DataFrame({"rlnOpticsGroup": np.arange(1, groups + 1),
                          "rlnOpticsGroupName": [f"opticsGroup{g}" for g in range(1, groups + 1)],
                          "rlnImagePixelSize": apix, "rlnImageSize": box, "rlnImageDimensionality": 2,
                          "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1})
    return table.assign(**columns)


def particles(stack: str, n: int, **columns) -> pd.DataFrame:
    """A particles table of the ``n`` images of ``stack`` (path as written in the STAR) with defocus values, optics
    group 1, and ``columns`` (scalars or one per particle)."""
    rng = np.random.default_rng(n)
    table = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@{stack}" for i in range(n)],
                          "rlnDefocusU": rng.uniform(1e4, 2e4, n), "rlnDefocusV": rng.uniform(1e4, 2e4, n),
                          "rlnDefocusAngle": rng.uniform(-90, 90, n), "rlnOpticsGroup": 1})
    return table.assign(**columns)


def star_file(path, particles: pd.DataFrame, optics: pd.DataFrame | None = None) -> Path:
    """``particles`` (and ``optics``: RELION 3.1; None: a RELION 3.0 file with one table) written by starfile as
    they are, unchecked, so hostile values reach the reader."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = {"particles": particles} if optics is None else {"optics": optics, "particles": particles}
    starfile.write(blocks if optics is not None else particles, path, overwrite=True)
    return path


def stack_and_star(folder, n: int = 6, box: int = 16, apix: float = 1.5, optics_columns=None, **columns) -> Path:
    """``folder/stack.mrcs`` (``n`` :func:`images`) and ``folder/particles.star`` (RELION 3.1, paths relative to the
    working directory) with ``columns`` added to the particles and ``optics_columns`` to the optics; the STAR path."""
    folder = Path(folder)
    mrc_file(folder / "stack.mrcs", images(n, box), apix)
    table = particles(str(folder / "stack.mrcs"), n, **columns)
    return star_file(folder / "particles.star", table, optics(apix, box, **(optics_columns or {})))


#: the fields of a cryoSPARC v4 particles file after a 2-D classification (as cryoSPARC writes them: fixed-width
#: bytes for text) and the alignment fields of a 3-D refinement
CRYOSPARC_FIELDS = [
    ("uid", "<u8"), ("blob/path", "S64"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"),
    ("blob/sign", "<f4"), ("blob/import_sig", "<u8"), ("ctf/type", "S9"), ("ctf/exp_group_id", "<u4"),
    ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"),
    ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"), ("ctf/scale", "<f4"),
    ("ctf/scale_const", "<f4"), ("ctf/shift_A", "<f4", (2,)), ("ctf/tilt_A", "<f4", (2,)),
    ("ctf/trefoil_A", "<f4", (2,)), ("ctf/tetra_A", "<f4", (4,)), ("ctf/anisomag", "<f4", (4,)), ("ctf/bfactor", "<f4")]
ALIGNMENT_FIELDS = [("split", "<u4"), ("shift", "<f4", (2,)), ("psize_A", "<f4"), ("error", "<f4"),
                    ("error_min", "<f4"), ("resid_pow", "<f4"), ("slice_pow", "<f4"), ("image_pow", "<f4"),
                    ("cross_cor", "<f4"), ("alpha", "<f4"), ("weight", "<f4"), ("pose_ess", "<f4"),
                    ("shift_ess", "<f4"), ("class_posterior", "<f4"), ("class", "<u4"), ("class_ess", "<f4")]


def cryosparc_particles(path, stack: str, n: int, box: int, apix: float, alignments: str = "3D") -> np.ndarray:
    """A cryoSPARC particles ``.cs`` file of the ``n`` images of ``stack`` (written as ``>stack``, cryoSPARC's
    project-relative form) with the full field set and ``alignments3D/*`` (pose: rotation vectors) or
    ``alignments2D/*``; every field holds distinct values. Written with numpy as cryoSPARC does; the records."""
    rng = np.random.default_rng(7)
    pose = ("pose", "<f4", (3,)) if alignments == "3D" else ("pose", "<f4")
    fields = CRYOSPARC_FIELDS + [(f"alignments{alignments}/{f[0]}", *f[1:]) for f in ALIGNMENT_FIELDS + [pose]]
    records = np.zeros(n, dtype=fields)
    for name in records.dtype.names:
        kind = records.dtype[name].base.kind
        if kind == "f":
            records[name] = rng.uniform(0.1, 0.9, records[name].shape)
        elif kind == "u":
            records[name] = rng.integers(0, 2**31, records[name].shape)
    records["uid"] = rng.integers(2**62, 2**64 - 1, n, dtype=np.uint64)
    records["blob/path"], records["blob/idx"] = f">{stack}".encode(), np.arange(n)
    records["blob/shape"], records["blob/psize_A"], records["ctf/type"] = box, apix, b"ctffind4"
    records["ctf/accel_kv"], records["ctf/cs_mm"], records["ctf/amp_contrast"] = 300.0, 2.7, 0.07
    records["ctf/df1_A"], records["ctf/df2_A"] = rng.uniform(1e4, 2e4, n), rng.uniform(1e4, 2e4, n)
    records[f"alignments{alignments}/class"] = rng.integers(0, 4, n)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        np.save(file, records)
    return records
