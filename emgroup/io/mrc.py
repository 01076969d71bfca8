"""MRC/MRCS images and volumes through ``mrcfile``: memory-mapped reads, atomic streamed writes.

Images are ``(N, D, D)`` arrays (row = y, column = x); volumes ``(D, D, D)`` (z, y, x); pixel sizes in Å.
"""

import contextlib
from pathlib import Path

import mrcfile
import numpy as np

from emgroup.errors import InputError
from emgroup.io.atomic import atomic_path


def open_stack(path) -> np.ndarray:
    """Read-only memory map of the images in ``path``: ``(N, D, D)`` (a 2-D file is ``(1, D, D)``), native dtype.

    Raises :class:`InputError` for a missing, truncated, non-MRC or non-2-D/3-D file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        with mrcfile.mmap(path, mode="r") as mrc:
            data = mrc.data
    except (ValueError, OSError) as err:  # bad header, or data block shorter than the header says
        truncated = "greater than file size" in str(err)
        raise InputError("truncated MRC file (shorter than its header says)" if truncated
                         else f"not a readable MRC file ({err})", path) from None
    if data is None or data.ndim not in (2, 3):
        raise InputError("MRC file holds no 2-D images", path)
    return data[np.newaxis] if data.ndim == 2 else data


def read_voxel_size(path) -> float | None:
    """Pixel/voxel size in Å from the header (the x size), or None when the header says 0."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        with mrcfile.open(path, mode="r", header_only=True) as mrc:
            size = float(mrc.voxel_size.x)
    except (ValueError, OSError) as err:
        raise InputError(f"not a readable MRC file ({err})", path) from None
    return size if size > 0 else None


class StackWriter:
    """Stream ``n`` images of ``box`` x ``box`` pixels into an MRCS stack without holding it in memory.

    ``with StackWriter(path, n, box, apix) as out: out.write(chunk)`` appends float32 chunks ``(m, D, D)``;
    on a clean exit the header gets the statistics (min, max, mean, rms over all images, accumulated chunk by
    chunk) and the pixel size ``apix`` (Å), and the file is renamed into place. On error nothing is left behind.
    """

    def __init__(self, path, n: int, box: int, apix: float):
        self.path, self.n, self.box, self.apix = Path(path), int(n), int(box), float(apix)
        self.written = 0
        self._min, self._max, self._sum, self._squares = np.inf, -np.inf, 0.0, 0.0

    def __enter__(self):
        self._files = contextlib.ExitStack()
        with self._files:
            tmp = self._files.enter_context(atomic_path(self.path))
            self._mrc = self._files.enter_context(
                mrcfile.new_mmap(tmp, shape=(self.n, self.box, self.box), mrc_mode=2, overwrite=True))
            self._mrc.set_image_stack()
            self._files = self._files.pop_all()
        return self

    def write(self, chunk: np.ndarray) -> None:
        """Append images ``(m, D, D)`` (cast to float32)."""
        chunk = np.asarray(chunk, dtype=np.float32)
        end = self.written + len(chunk)
        if chunk.shape[1:] != (self.box, self.box) or end > self.n:
            raise ValueError(f"chunk {chunk.shape} does not fit a stack of {self.n} x {self.box}^2 at {self.written}")
        if not len(chunk):
            return
        self._mrc.data[self.written:end] = chunk
        wide = chunk.astype(np.float64)
        self._min, self._max = min(self._min, wide.min()), max(self._max, wide.max())
        self._sum, self._squares = self._sum + wide.sum(), self._squares + np.square(wide).sum()
        self.written = end

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            return self._files.__exit__(exc_type, exc, tb)  # close and delete the temporary file
        with self._files:  # an error while finishing also deletes it
            if self.written != self.n:
                raise ValueError(f"{self.path}: {self.written} of {self.n} images written")
            count = self.n * self.box * self.box
            mean = self._sum / count
            header = self._mrc.header
            header.dmin, header.dmax, header.dmean = self._min, self._max, mean
            header.rms = np.sqrt(max(self._squares / count - mean**2, 0.0))
            self._mrc.voxel_size = self.apix
        return False


def write_stack(path, images: np.ndarray, apix: float) -> None:
    """Write images ``(N, D, D)`` as a float32 MRCS stack with pixel size ``apix`` (Å), atomically."""
    images = np.asarray(images)
    with StackWriter(path, len(images), images.shape[-1], apix) as out:
        out.write(images)


def read_volume(path) -> tuple[np.ndarray, float | None]:
    """A cubic volume ``(D, D, D)`` (z, y, x) as float32, and its voxel size in Å (None when the header says 0)."""
    vol = open_stack(path)
    if len(set(vol.shape)) != 1:
        raise InputError(f"not a cubic volume (shape {vol.shape})", path)
    return np.array(vol, dtype=np.float32), read_voxel_size(path)


def write_volume(path, vol: np.ndarray, apix: float) -> None:
    """Write a volume ``(D, D, D)`` (z, y, x) as float32 with voxel size ``apix`` (Å), atomically."""
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.asarray(vol, dtype=np.float32))
        mrc.set_volume()
        mrc.voxel_size = apix
        mrc.update_header_stats()
