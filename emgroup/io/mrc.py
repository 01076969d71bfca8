"""MRC/MRCS images and volumes through ``mrcfile``: memory-mapped reads, atomic streamed writes.

Images are ``(N, D, D)`` arrays (row = y, column = x); volumes ``(D, D, D)`` (z, y, x); pixel sizes in Å.
"""

import contextlib
import warnings
from pathlib import Path

import mrcfile
import numpy as np
from mrcfile import utils as mrc_utils
from mrcfile.mrcinterpreter import MrcInterpreter

from emgroup.errors import InputError, InputWarning
from emgroup.io.atomic import atomic_path


def open_stack(path) -> np.ndarray:
    """Read-only memory map of the images in ``path``: ``(N, D, D)`` (a 2-D file is ``(1, D, D)``), native dtype.

    Raises :class:`InputError` for a missing, truncated or non-MRC file, complex values, no images, or a 3-D map
    (space group 1-230 and a cube: a volume, not a stack of particle images).
    """
    data, _, header = _read(path)
    if data.ndim not in (2, 3):
        raise InputError(f"MRC file holds {data.ndim}-D data, not 2-D images", path)
    if data.ndim == 3 and 1 <= int(header.ispg) <= 230 and len(set(data.shape)) == 1:
        raise InputError(f"holds a 3-D map ({data.shape[0]}^3 voxels, MRC space group {int(header.ispg)}), not "
                         "particle images; a stack of images has space group 0", path)
    images = data[np.newaxis] if data.ndim == 2 else data
    if len(images) == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise InputError(f"holds no images ({' x '.join(map(str, images.shape[::-1]))} pixels)", path)
    return images


def open_volume(path) -> tuple[np.ndarray, float | None]:
    """Read-only memory map of a 3-D map ``(D1, D2, D3)`` (z, y, x) and its voxel size in Å (None when the header
    says 0); :class:`InputError` for a missing, truncated, non-MRC, complex or non-3-D file."""
    data, voxel_size, _ = _read(path)
    if data.ndim != 3:
        raise InputError(f"MRC file holds {data.ndim}-D data, not a 3-D volume", path)
    return data, voxel_size


def read_voxel_size(path) -> float | None:
    """Pixel/voxel size in Å from the header (the x size), or None when the header says 0."""
    return _read(path)[1]


def _read(path) -> tuple[np.ndarray, float | None, np.recarray]:
    """(read-only memory map of the data, voxel size in Å or None, header) of an MRC file, read by ``mrcfile``.

    A header without the ID string ``MAP `` (older cryoDRGN and other tools wrote them; RELION reads them) is read
    when its sizes match the file exactly, with an :class:`InputWarning`; otherwise it is not an MRC file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        data, voxel_size, header = _mmap(path, permissive=False)
    except ValueError as err:
        if "Map ID string not found" not in str(err):
            truncated = "greater than file size" in str(err)
            raise InputError("truncated MRC file (shorter than its header says)" if truncated
                             else f"not a readable MRC file ({err})", path) from None
        data, voxel_size, header = _mmap(path, permissive=True)
        if data is None or path.stat().st_size != _stated_size(header):
            raise InputError("not a readable MRC file (no ID string 'MAP ' and the header's sizes do not match the "
                             "file)", path) from None
        warnings.warn(InputWarning(f"no MRC ID string 'MAP ' in the header; read as {_described(data)} (the "
                                   "header's sizes match the file)", path))
    except OSError as err:
        raise InputError(f"not a readable MRC file ({err.strerror or err})", path) from None
    if np.iscomplexobj(data):
        raise InputError(f"complex-valued data (MRC mode {int(header.mode)}); emgroup reads real images", path)
    return data, voxel_size, header


def _mmap(path: Path, permissive: bool):
    """``mrcfile.mmap`` read-only: (data or None, voxel size or None, header); permissive reads keep quiet (the
    caller decides what to say)."""
    with warnings.catch_warnings():
        if permissive:
            warnings.simplefilter("ignore")
        with mrcfile.mmap(path, mode="r", permissive=permissive) as mrc:
            size = float(mrc.voxel_size.x)
            return mrc.data, (size if size > 0 else None), mrc.header


def _stated_size(header) -> int:
    """File size in bytes that the header states: header, extended header and data block."""
    count = int(np.prod(mrc_utils.data_shape_from_header(header)))
    return header.nbytes + int(header.nsymbt) + count * mrc_utils.data_dtype_from_header(header).itemsize


def _described(data: np.ndarray) -> str:
    return f"{' x '.join(map(str, data.shape))} {data.dtype.name}"


class StackWriter:
    """Stream ``n`` images of ``box`` x ``box`` pixels into an MRCS stack without holding it in memory.

    ``with StackWriter(path, n, box, apix) as out: out.write(chunk)`` appends float32 chunks ``(m, D, D)`` with
    ordinary file writes (a full disk is an error of the write, never a SIGBUS of a memory map); on a clean exit the
    header gets the statistics (min, max, mean, rms over all images, accumulated chunk by chunk) and the pixel size
    ``apix`` (Å), and the file is renamed into place. On error nothing is left behind.
    """

    def __init__(self, path, n: int, box: int, apix: float):
        self.path, self.n, self.box, self.apix = Path(path), int(n), int(box), float(apix)
        self.written = 0
        self._min, self._max, self._sum, self._squares = np.inf, -np.inf, 0.0, 0.0

    def __enter__(self):
        self._files = contextlib.ExitStack()
        with self._files:
            tmp = self._files.enter_context(atomic_path(self.path))
            self._file = self._files.enter_context(open(tmp, "wb"))
            self._file.write(_stack_header(self.n, self.box, self.apix))  # statistics follow at the end
            self._files = self._files.pop_all()
        return self

    def write(self, chunk: np.ndarray) -> None:
        """Append images ``(m, D, D)`` (cast to float32)."""
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        end = self.written + len(chunk)
        if chunk.shape[1:] != (self.box, self.box) or end > self.n:
            raise ValueError(f"chunk {chunk.shape} does not fit a stack of {self.n} x {self.box}^2 at {self.written}")
        if not len(chunk):
            return
        self._file.write(chunk.data)
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
            with np.errstate(invalid="ignore"):  # Inf pixels: NaN statistics, as mrcfile gives them
                rms = np.sqrt(max(self._squares / count - mean**2, 0.0))
            self._file.seek(0)
            self._file.write(_stack_header(self.n, self.box, self.apix, (self._min, self._max, mean, rms)))
        return False


def _stack_header(n: int, box: int, apix: float, statistics=(0.0, 0.0, 0.0, 0.0)) -> np.recarray:
    """The MRC header mrcfile writes for a float32 stack of ``n`` images of ``box`` px (space group 0) with pixel
    size ``apix`` (Å) and ``statistics`` (min, max, mean, rms)."""
    mrc = MrcInterpreter()
    mrc._create_default_attributes()  # mrcfile's documented start of a header with no stream to read
    mrc.set_data(np.zeros((1, box, box), np.float32))
    mrc.set_image_stack()
    mrc.header.nz = n
    mrc.voxel_size = apix
    mrc.header.dmin, mrc.header.dmax, mrc.header.dmean, mrc.header.rms = statistics
    return mrc.header


def write_stack(path, images: np.ndarray, apix: float) -> None:
    """Write images ``(N, D, D)`` as a float32 MRCS stack with pixel size ``apix`` (Å), atomically."""
    images = np.asarray(images)
    with StackWriter(path, len(images), images.shape[-1], apix) as out:
        out.write(images)


def read_volume(path) -> tuple[np.ndarray, float | None]:
    """A cubic volume ``(D, D, D)`` (z, y, x) as float32, and its voxel size in Å (None when the header says 0)."""
    vol, voxel_size = open_volume(path)
    if len(set(vol.shape)) != 1:
        raise InputError(f"not a cubic volume (shape {vol.shape})", path)
    return np.array(vol, dtype=np.float32), voxel_size


def write_volume(path, vol: np.ndarray, apix: float) -> None:
    """Write a volume ``(D, D, D)`` (z, y, x) as float32 with voxel size ``apix`` (Å), atomically."""
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.asarray(vol, dtype=np.float32))
        mrc.set_volume()
        mrc.voxel_size = apix
        mrc.update_header_stats()
