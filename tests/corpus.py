"""Builders of the files other software writes and of hostile input, for the tests (no file is copied from
anywhere: each is made here with numpy, mrcfile and starfile, in the shape the real ones have)."""

from pathlib import Path

import mrcfile
import numpy as np

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
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if data.ndim == 3:
            mrc.set_volume() if volume else mrc.set_image_stack()
        mrc.voxel_size = apix
    return path
