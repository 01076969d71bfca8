"""`VolumeStack`: 3-D volumes read lazily, with the `ParticleStack` interface (``len``, ``box``, ``apix``, ``meta``,
``optics``, ``images``, ``subset``, ``iter_chunks``), for the models that train on volumes.

Inputs: a STAR file with one row per volume (``rlnImageName`` = the volume's file, as `emgroup simulate --volumes`
writes ``volumes.star``), a folder of ``.mrc``/``.nii``/``.nii.gz`` files (sorted by name), or one such file.
MRC volumes are z-y-x as mrcfile returns them; NIfTI (read with the optional ``nibabel``) is stored i-j-k and is
transposed to k-j-i so that its first axis is z; a 4-D NIfTI file holds one volume per index of its 4th axis.
The voxel size ``apix`` is in Å for MRC (STAR optics or header) and in the NIfTI header's units (mm for MRI).
"""

from pathlib import Path

import numpy as np
import pandas as pd

from emgroup.errors import InputError
from emgroup.io.mrc import open_volume
from emgroup.io.star import format_image_name, optics_table, parse_image_name, read_star, relative_to_cwd

VOLUME_SUFFIXES = (".mrc", ".map", ".nii", ".nii.gz")


def _is_nifti(path) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise InputError("reading NIfTI volumes needs the optional package nibabel (pip install nibabel)") from None
    return nibabel


def _open_volumes(path: str):
    """(array-like (n, D1, D2, D3) z-y-x, voxel size or None) of one file, without reading the voxels."""
    if _is_nifti(path):
        try:
            image = _nibabel().load(path)
        except Exception as err:  # nibabel raises several types for a bad file; the message says which
            raise InputError(f"not a readable NIfTI file ({err})", path) from None
        if image.ndim not in (3, 4):
            raise InputError(f"NIfTI image has {image.ndim} dimensions (expected 3, or 4 for several volumes)", path)
        data = image.dataobj  # lazy proxy, i-j-k(-t)
        zooms = image.header.get_zooms()[:3]
        volumes = _NiftiVolumes(data)
        return volumes, float(zooms[0]) if zooms[0] > 0 else None
    data, voxel_size = open_volume(path)
    return data[np.newaxis], voxel_size


class _NiftiVolumes:
    """A NIfTI data proxy seen as (n, D, D, D) z-y-x volumes (reads one volume per index)."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.shape = (proxy.shape[3] if len(proxy.shape) == 4 else 1, *proxy.shape[2::-1])

    def __getitem__(self, index: int) -> np.ndarray:
        volume = self.proxy[..., index] if len(self.proxy.shape) == 4 else self.proxy[...]
        return np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)


class VolumeStack:
    """Volumes (read lazily, float32 (n, D, D, D)) with a table ``meta`` (RELION labels; ``rlnImageName`` is each
    volume's file relative to the working directory, ``NNNNNN@file`` for the volumes of a 4-D file) and a
    one-group ``optics`` table (``rlnImageDimensionality`` 3). Build with :meth:`open`."""

    def __init__(self, meta: pd.DataFrame, optics: pd.DataFrame, apix: float, files: list[str],
                 file_id: np.ndarray, index: np.ndarray, box: int, path: Path | None = None):
        self.meta, self.optics, self.apix, self.box, self.path = meta, optics, float(apix), int(box), path
        self._files, self._file_id, self._index = files, file_id, index

    @classmethod
    def open(cls, path, root=None, apix: float | None = None) -> "VolumeStack":
        """Volumes from a ``.star`` file, a folder, or one ``.mrc``/``.nii``/``.nii.gz`` file.

        STAR paths are tried relative to ``root`` (if given), the working directory, then the STAR file's
        folder. ``apix`` overrides the voxel size the input states.
        """
        path = Path(path)
        if path.is_dir():
            names = sorted(str(p) for p in path.iterdir() if p.name.lower().endswith(VOLUME_SUFFIXES))
            if not names:
                raise InputError(f"no volume files ({', '.join(VOLUME_SUFFIXES)}) in the folder", path)
            meta, optics, folders = pd.DataFrame({"rlnImageName": names}), None, [Path.cwd()]
        elif not path.is_file():
            raise InputError("no such file", path)
        elif path.suffix.lower() == ".star":
            meta, optics = read_star(path)
            if "rlnImageName" not in meta:
                raise InputError("no rlnImageName column (not a volumes file)", path)
            if len(meta) == 0:
                raise InputError("no volumes", path)
            folders = ([Path(root)] if root is not None else []) + [Path.cwd(), path.parent]
        elif path.name.lower().endswith(VOLUME_SUFFIXES):
            meta, optics, folders = pd.DataFrame({"rlnImageName": [str(path)]}), None, [Path.cwd()]
        else:
            raise InputError(f"unknown input type (expected .star, a folder, or {', '.join(VOLUME_SUFFIXES)})", path)
        return cls._from_table(path, meta, optics, folders, apix)

    @classmethod
    def _from_table(cls, path: Path, meta, optics, folders, apix) -> "VolumeStack":
        try:
            index, names = parse_image_name(meta["rlnImageName"].to_numpy(dtype=str))
        except ValueError as err:
            raise InputError(f"bad rlnImageName ({err})", path) from None
        unique, file_id = np.unique(names, return_inverse=True)
        files, counts, boxes, sizes = [], [], set(), set()
        for name in unique:
            found = next((folder / name for folder in folders if (folder / name).is_file()), None)
            if found is None:
                raise InputError(f"volume {name} not found (looked in {', '.join(map(str, folders))})", path)
            volumes, size = _open_volumes(str(found))
            if len(set(volumes.shape[1:])) != 1:
                raise InputError(f"not a cubic volume ({' x '.join(map(str, volumes.shape[1:]))} voxels)", found)
            files.append(str(found))
            counts.append(volumes.shape[0])
            boxes.add(volumes.shape[1])
            sizes.add(size)
        if len(boxes) > 1:
            raise InputError(f"mixed box sizes {sorted(boxes)} voxels", path)
        if optics is None:  # a folder or a file: every volume of every file is a row
            index = np.concatenate([np.arange(n) for n in counts])
            file_id = np.repeat(np.arange(len(files)), counts)
            meta = pd.DataFrame(index=range(len(index)))
        past = np.flatnonzero(index >= np.asarray(counts)[file_id])
        if len(past):
            raise InputError(f"volume {index[past[0]] + 1}@{names[past[0]]} is past the end of its file",
                             path)
        box = boxes.pop()
        if apix is None:
            stated = optics["rlnImagePixelSize"].dropna().unique() if optics is not None else []
            if len(stated) > 1:
                raise InputError("volumes have several voxel sizes; pass --apix", path)
            apix = float(stated[0]) if len(stated) else (sizes.pop() if len(sizes) == 1 else None)
            if apix is None:
                raise InputError("no voxel size in the metadata or the file headers; pass --apix", path)
        relative = np.array([relative_to_cwd(f) for f in files])[file_id]
        several = np.asarray(counts)[file_id] > 1
        meta = meta.assign(rlnImageName=np.where(several, format_image_name(index, relative), relative))
        optics = (optics if optics is not None else optics_table(apix, box)).assign(
            rlnImagePixelSize=float(apix), rlnImageSize=box, rlnImageDimensionality=3)
        return cls(meta.reset_index(drop=True), optics, apix, files, file_id, index, box, path)

    def __len__(self) -> int:
        return len(self._index)

    def images(self, indices=None) -> np.ndarray:
        """float32 ``(n, D, D, D)`` volumes (z, y, x) at ``indices`` (ints, a slice or a boolean mask; None: all)."""
        rows = np.arange(len(self)) if indices is None else np.atleast_1d(np.arange(len(self))[indices])
        out = np.empty((len(rows), self.box, self.box, self.box), np.float32)
        for k, row in enumerate(rows):  # one file per volume: a read per volume
            out[k] = _open_volumes(self._files[self._file_id[row]])[0][self._index[row]]
        return out

    def subset(self, indices) -> "VolumeStack":
        """The volumes at ``indices`` (same forms as :meth:`images`) as a new stack; nothing is read."""
        rows = np.atleast_1d(np.arange(len(self))[indices])
        return VolumeStack(self.meta.iloc[rows].reset_index(drop=True), self.optics, self.apix, self._files,
                           self._file_id[rows], self._index[rows], self.box, self.path)

    def iter_chunks(self, size: int):
        """Yield ``(indices, volumes)`` in order, ``size`` volumes at a time."""
        for start in range(0, len(self), size):
            indices = np.arange(start, min(start + size, len(self)))
            yield indices, self.images(indices)
