"""`Stack`: particle images or volumes read lazily, with their RELION metadata and optics, from any input we
accept.

Data are read on demand from memory-mapped files (never the whole stack unless asked) as float32 ``(n, D, D)``
images or ``(n, D, D, D)`` volumes (z-y-x), by one of three readers: rows of MRC stacks, boxes cut from
micrographs, volume files (:mod:`emgroup.io.volumes`). ``meta`` is the particles table (RELION labels), ``optics``
the optics table; one pixel (voxel) size ``apix`` (Å/px) and one box ``D`` (px) for the whole stack.
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd

from emgroup.errors import InputError
from emgroup.io.atomic import written_together
from emgroup.io.cryosparc import read_cs
from emgroup.io.mrc import StackWriter, open_stack, read_voxel_size
from emgroup.io.star import (format_image_name, optics_table, parse_image_name, read_star, relative_to_cwd,
                              write_star)
from emgroup.io.topaz import read_topaz
from emgroup.io.volumes import VOLUME_SUFFIXES, is_volume_file, open_volumes

#: shifts in Å, rescaled when --apix overrides the pixel size the input states
ORIGIN_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
#: memory maps kept open per stack (a RELION project may spread particles over thousands of files)
_OPEN_FILES = 64


class _FileImages:
    """Row ``i`` of a stack is read from file ``files[file_id[i]]`` (opened once, cached); subclasses say how a
    file is opened (``load``) and a row taken from it (``_take``), and the data's dimension ``ndim``."""

    ndim = 2

    def __init__(self, files: list[str], file_id: np.ndarray, box: int):
        self.files, self.file_id, self.box = files, file_id, box
        self._maps: dict[str, np.ndarray] = {}

    def __getstate__(self):  # memory maps do not travel to worker processes; they reopen
        return {**self.__dict__, "_maps": {}}

    @staticmethod
    def load(path: str):
        """The file's data, indexed by image number: ``(N, D, D)``."""
        return open_stack(path)

    def _open(self, path: str):
        if path not in self._maps:
            if len(self._maps) >= _OPEN_FILES:
                del self._maps[next(iter(self._maps))]
            self._maps[path] = self.load(path)
        return self._maps[path]

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Data of ``rows`` as float32 ``(n, D, D)`` or ``(n, D, D, D)``, one vectorised read per file touched."""
        out = np.empty((len(rows), *(self.box,) * self.ndim), dtype=np.float32)
        file_id = self.file_id[rows]
        order = np.argsort(file_id, kind="stable")
        ids, starts = np.unique(file_id[order], return_index=True)
        for fid, sel in zip(ids, np.split(order, starts[1:])):
            out[sel] = self._take(self._open(self.files[fid]), rows[sel])
        return out


class _StackImages(_FileImages):
    """Images in MRC stacks: row ``i`` is image ``index[i]`` (0-based) of its file."""

    #: words of the error messages: what a row is, one item of a file, a file of items, the unit of the box
    rows, item, kind, unit = "particles", "image", "image stack", "px"

    def __init__(self, files, file_id, index, box):
        super().__init__(files, file_id, box)
        self.index = index

    def _take(self, data, rows):
        return data[self.index[rows]]

    @classmethod
    def probe(cls, path) -> tuple[int, int]:
        """(images in the file, box px); :class:`InputError` for non-square images."""
        shape = open_stack(path).shape
        if shape[1] != shape[2]:
            raise InputError(f"images are not square ({shape[2]} x {shape[1]} px)", path)
        return shape[0], shape[2]

    @staticmethod
    def voxel_size(files: list[str]) -> float | None:
        """The pixel size (Å) the first file's header states."""
        return read_voxel_size(files[0])

    @staticmethod
    def image_names(index, paths, counts) -> np.ndarray:
        """``rlnImageName`` of rows at 0-based ``index`` of files ``paths`` (each holding ``counts`` items)."""
        return format_image_name(index, paths)


class _VolumeFiles(_StackImages):
    """Volumes in MRC/NIfTI files: row ``i`` is volume ``index[i]`` (0-based) of its file (a 4-D NIfTI holds
    several)."""

    ndim, rows, item, kind, unit = 3, "volumes", "volume", "volume", "voxels"

    @staticmethod
    def load(path: str):
        return open_volumes(path)[0]

    def _take(self, data, rows):  # a NIfTI proxy reads one volume per index
        return np.stack([data[i] for i in self.index[rows]])

    @classmethod
    def probe(cls, path) -> tuple[int, int]:
        """(volumes in the file, box in voxels); :class:`InputError` for a volume that is not a cube."""
        shape = cls.load(path).shape
        if len(set(shape[1:])) != 1:
            raise InputError(f"not a cubic volume ({' x '.join(map(str, shape[1:]))} voxels)", path)
        return shape[0], shape[1]

    @staticmethod
    def voxel_size(files: list[str]) -> float | None:
        """The voxel size the files' headers state, when they all state the same one."""
        sizes = {open_volumes(f)[1] for f in files}
        return sizes.pop() if len(sizes) == 1 else None

    @staticmethod
    def image_names(index, paths, counts) -> np.ndarray:
        """The file alone for a file of one volume, ``NNNNNN@file`` for the volumes of a 4-D file."""
        return np.where(counts > 1, format_image_name(index, paths), paths)


class _MicrographBoxes(_FileImages):
    """Boxes cut from micrographs: row ``i`` is the ``box``-sized square whose top-left pixel is (x0[i], y0[i])."""

    def __init__(self, files, file_id, x0, y0, box):
        super().__init__(files, file_id, box)
        self.x0, self.y0 = x0, y0

    def _take(self, data, rows):
        offsets = np.arange(self.box)
        ys = self.y0[rows, None, None] + offsets[None, :, None]
        xs = self.x0[rows, None, None] + offsets[None, None, :]
        return data[0][ys, xs]


#: the reader of the files a table names, by the dimension of their data
_READERS = {2: _StackImages, 3: _VolumeFiles}


class Stack:
    """Particle images or volumes (read lazily) with a particles table ``meta`` and an ``optics`` table.

    Build with :meth:`open` (``.star``, ``.mrcs``/``.mrc``, ``.cs``; for volumes ``.star``, a folder or one volume
    file) or :meth:`from_topaz`. ``ndim`` is 2 for images ``(n, D, D)``, 3 for volumes ``(n, D, D, D)``; ``apix``
    is the pixel size in Å, ``box`` the side in pixels, ``path`` the file it was opened from. ``edge_skipped``
    counts Topaz coordinates dropped because their box crossed the micrograph edge (0 for other inputs).
    ``meta["rlnImageName"]`` (STAR/MRCS/cs/volume input) names each image by its resolved path relative to the
    working directory, as RELION run from there finds it. ``records`` holds a ``.cs`` input's cryoSPARC records
    as they were read (one per row of ``meta``; None for other inputs), so that what is written back keeps them.
    """

    def __init__(self, meta: pd.DataFrame, optics: pd.DataFrame, apix: float, reader: _FileImages,
                 rows: np.ndarray | None = None, edge_skipped: int = 0, path: Path | None = None,
                 records: np.ndarray | None = None):
        self.meta, self.optics, self.apix, self._reader = meta, optics, float(apix), reader
        self._rows = np.arange(len(meta)) if rows is None else rows
        self.edge_skipped, self.path, self.records = edge_skipped, path, records

    # --- constructors -------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path, ndim: int = 2, root=None, apix: float | None = None) -> "Stack":
        """The ``ndim``-D data of ``path``: particle images (2) from a RELION ``.star``, an MRC stack
        ``.mrcs``/``.mrc`` or a cryoSPARC ``.cs`` file; volumes (3) from a ``.star`` with one row per volume (as
        `emgroup simulate --volumes` writes ``volumes.star``), a folder of volume files (sorted by name; every
        volume of each) or one volume file (:data:`~emgroup.io.volumes.VOLUME_SUFFIXES`).

        Image paths in STAR/cs files are tried relative to ``root`` (if given), the working directory, then the
        file's folder; last, the file name alone in the file's folder (a RELION project's STAR and stack moved
        together). ``apix`` (Å) overrides the pixel size the input states, and shifts in Å are rescaled with it
        (they keep their value in pixels); particles in optics groups at several pixel sizes are refused either way.
        :class:`InputError` when the file holds data of the other dimension.
        """
        if ndim == 3:
            try:
                return cls._open_volumes(Path(path), root, apix)
            except InputError as err:
                raise InputError(f"{err.problem}; this model trains on 3-D volumes (`emgroup simulate --volumes` "
                                 "writes them)", err.path) from None
        stack = cls._open_images(Path(path), root, apix)
        dims = stack.optics.get("rlnImageDimensionality")
        if dims is not None and (dims.to_numpy() == 3).any():
            raise InputError("holds 3-D volumes (rlnImageDimensionality 3), not 2-D particle images", path)
        return stack

    @classmethod
    def _open_images(cls, path: Path, root, apix) -> "Stack":
        suffix, records = path.suffix.lower(), None
        if not path.is_file():
            raise InputError("no such file", path)
        if suffix == ".star":
            meta, optics = read_star(path)
        elif suffix == ".cs":
            meta, optics, records = read_cs(path)
        elif suffix in (".mrcs", ".mrc"):
            images = open_stack(path)
            meta = pd.DataFrame({"rlnImageName": format_image_name(np.arange(len(images)), relative_to_cwd(path)),
                                 "rlnOpticsGroup": 1})
            optics = optics_table(read_voxel_size(path) or np.nan, images.shape[-1])
        else:
            raise InputError("unknown input type (expected .star, .mrcs, .mrc or .cs)", path)
        return cls._from_table(path, meta, optics, root, apix, _StackImages, records)

    @classmethod
    def _open_volumes(cls, path: Path, root, apix) -> "Stack":
        if path.is_dir():
            names = sorted(str(p) for p in path.iterdir() if is_volume_file(p.name))
            if not names:
                raise InputError(f"no volume files ({', '.join(VOLUME_SUFFIXES)}) in the folder", path)
        elif not path.is_file():
            raise InputError("no such file", path)
        elif path.suffix.lower() == ".star":
            meta, optics = read_star(path)
            return cls._from_table(path, meta, optics, root, apix, _VolumeFiles)
        elif is_volume_file(path):
            names = [str(path)]
        else:
            raise InputError(f"unknown input type (expected .star, a folder, or {', '.join(VOLUME_SUFFIXES)})", path)
        counts = [_VolumeFiles.probe(name)[0] for name in names]  # every volume of every file is a row
        index = np.concatenate([np.arange(n) for n in counts])
        meta = pd.DataFrame({"rlnImageName": format_image_name(index, np.repeat(names, counts))})
        return cls._from_table(path, meta, None, root, apix, _VolumeFiles)

    @classmethod
    def _from_table(cls, table_path: Path, meta, optics, root, apix, reader, records=None) -> "Stack":
        """Resolve and check every ``rlnImageName`` of ``meta`` (read from ``table_path``; ``optics`` None when the
        input states none) and build the stack whose files ``reader`` (a :class:`_FileImages` class) reads."""
        if "rlnImageName" not in meta:
            raise InputError(f"no rlnImageName column (not a {reader.rows} file)", table_path)
        if len(meta) == 0:
            raise InputError(f"no {reader.rows}", table_path)
        try:
            index, names = parse_image_name(meta["rlnImageName"].to_numpy(dtype=str))
        except ValueError as err:
            raise InputError(f"bad rlnImageName ({err})", table_path) from None
        unique_names, file_id = np.unique(names, return_inverse=True)
        files = [str(_find(name, table_path, root, reader.kind)) for name in unique_names]
        counts, boxes = np.array([reader.probe(f) for f in files]).T
        past = np.flatnonzero(index >= counts[file_id])
        if len(past):
            first = past[0]
            raise InputError(f"{reader.item} {index[first] + 1}@{names[first]} is past the end of the stack "
                             f"({counts[file_id[first]]} {reader.item}s)", table_path)
        if len(set(boxes)) > 1:
            raise InputError(f"mixed box sizes {sorted(set(boxes.tolist()))} {reader.unit}", table_path)
        box = int(boxes[0])
        if optics is None:
            optics = optics_table(np.nan, box)
        apix, stated = _one_pixel_size(meta, optics, apix, lambda: reader.voxel_size(files), table_path)
        if stated is not None and apix != stated:  # the same shifts in pixels at the pixel size given
            meta = _rescaled_origins(meta, apix / stated)
        from_cwd = np.array([relative_to_cwd(f) for f in files])
        meta = meta.assign(rlnImageName=reader.image_names(index, from_cwd[file_id], counts[file_id]))
        optics = _set_image(optics, apix, box)
        if reader.ndim == 3:
            optics = optics.assign(rlnImageDimensionality=3)
        return cls(meta.reset_index(drop=True), optics, apix, reader(files, file_id, index, box), path=table_path,
                   records=records)

    @classmethod
    def from_topaz(cls, coords, micrographs_dir, box: int, apix: float | None = None) -> "Stack":
        """Boxes of ``box`` px centred on Topaz coordinates (x = column, y = row, px), cut from
        ``micrographs_dir/<image_name>.mrc``; boxes crossing a micrograph edge are dropped (``edge_skipped``). The
        score becomes ``rlnAutopickFigureOfMerit`` when the table has one (RELION would read a missing one as 0)."""
        coords, micrographs_dir = Path(coords), Path(micrographs_dir)
        table = read_topaz(coords)
        names, file_id = np.unique(table["image_name"].to_numpy(dtype=str), return_inverse=True)
        files = [micrographs_dir / f"{name}.mrc" for name in names]
        shapes = np.array([open_stack(f).shape for f in files])  # checks every micrograph is readable
        if (shapes[:, 0] != 1).any():
            raise InputError("micrograph is not a single 2-D image", files[int(np.argmax(shapes[:, 0] != 1))])
        x0 = np.rint(table["x_coord"].to_numpy()).astype(np.int64) - box // 2
        y0 = np.rint(table["y_coord"].to_numpy()).astype(np.int64) - box // 2
        height, width = shapes[file_id, 1], shapes[file_id, 2]
        inside = (x0 >= 0) & (y0 >= 0) & (x0 + box <= width) & (y0 + box <= height)
        if not inside.any():
            raise InputError(f"every box of {box} px crosses a micrograph edge", coords)
        meta = pd.DataFrame({"rlnMicrographName": [relative_to_cwd(f) for f in files]}).iloc[file_id[inside]]
        score = table["score"].to_numpy()[inside]
        meta = meta.reset_index(drop=True).assign(
            rlnCoordinateX=table["x_coord"].to_numpy()[inside], rlnCoordinateY=table["y_coord"].to_numpy()[inside],
            **({} if np.isnan(score).all() else {"rlnAutopickFigureOfMerit": score}), rlnOpticsGroup=1)
        apix = _checked_apix(apix)
        if apix is None:
            sizes = {read_voxel_size(f) for f in files}
            if None in sizes:
                raise InputError("a micrograph header gives no pixel size; pass --apix", micrographs_dir)
            if len(sizes) > 1:
                raise InputError(f"micrographs have several pixel sizes {_listed(sizes)} Å; pass --apix",
                                 micrographs_dir)
            apix = sizes.pop()
        reader = _MicrographBoxes([str(f) for f in files], file_id[inside], x0[inside], y0[inside], box)
        return cls(meta, optics_table(apix, box), apix, reader, edge_skipped=int((~inside).sum()), path=coords)

    # --- access -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def box(self) -> int:
        """Image side length in pixels."""
        return self._reader.box

    @property
    def ndim(self) -> int:
        """2 for images ``(n, D, D)``, 3 for volumes ``(n, D, D, D)``."""
        return self._reader.ndim

    @property
    def sources(self) -> list[Path]:
        """The image files this stack reads from (resolved paths)."""
        return [Path(f) for f in self._reader.files]

    def images(self, indices=None) -> np.ndarray:
        """float32 ``(n, D, D)`` images (``(n, D, D, D)`` volumes) at ``indices`` (ints, a slice or a boolean mask;
        None: all), reading only those."""
        rows = self._rows if indices is None else np.atleast_1d(self._rows[indices])
        return self._reader.read(rows)

    def subset(self, indices) -> "Stack":
        """The particles at ``indices`` (same forms as :meth:`images`) as a new stack; no image is read."""
        rows = np.atleast_1d(self._rows[indices])
        positions = np.atleast_1d(np.arange(len(self))[indices])
        records = None if self.records is None else self.records[positions]
        return Stack(self.meta.iloc[positions].reset_index(drop=True), self.optics, self.apix, self._reader,
                             rows, self.edge_skipped, self.path, records)

    def iter_chunks(self, size: int):
        """Yield ``(indices, images)`` over the stack in order, ``size`` particles (volumes) at a time."""
        for start in range(0, len(self), size):
            indices = np.arange(start, min(start + size, len(self)))
            yield indices, self.images(indices)


def require_finite(stack, indices, images, problem: str = "has NaN or Inf pixels") -> None:
    """:class:`InputError` naming ``stack``'s file and the first particle of ``indices`` (rows of ``stack``) whose
    ``images`` (n, ...) are not all finite: ``particle N (its image name) PROBLEM``."""
    bad = ~np.isfinite(np.asarray(images).reshape(len(images), -1)).all(axis=1)
    if bad.any():
        first = int(np.asarray(indices)[np.argmax(bad)])
        name = stack.meta["rlnImageName"].iloc[first] if "rlnImageName" in stack.meta else "from the coordinates"
        raise InputError(f"particle {first + 1} ({name}) {problem}", stack.path)


def write_particles(star_path, chunks, meta: pd.DataFrame, optics: pd.DataFrame, apix: float,
                    mrcs_path=None) -> Path:
    """Stream image ``chunks`` (an iterable of ``(m, D, D)`` arrays, ``len(meta)`` images in all) into an MRCS
    stack and write a RELION 3.1 STAR whose ``rlnImageName`` points at it (relative to the working directory).

    ``mrcs_path`` defaults to the STAR path with suffix ``.mrcs``; ``apix`` (Å) goes into the MRC header and
    the optics table (with the image size). Both files appear together, when both are complete, or neither does.
    Returns the STAR path.
    """
    star_path = Path(star_path)
    mrcs_path = star_path.with_suffix(".mrcs") if mrcs_path is None else Path(mrcs_path)
    chunks = iter(chunks)
    first = np.asarray(next(chunks, np.empty((0, 0, 0))))
    if len(first) == 0:
        raise ValueError("write_particles needs a first chunk with at least one image")
    box = first.shape[-1]
    meta = meta.reset_index(drop=True).assign(
        rlnImageName=format_image_name(np.arange(len(meta)), relative_to_cwd(mrcs_path)))
    if "rlnOpticsGroup" not in meta:
        meta["rlnOpticsGroup"] = int(optics["rlnOpticsGroup"].iloc[0])
    with written_together(), StackWriter(mrcs_path, len(meta), box, apix) as out:
        out.write(first)
        for chunk in chunks:
            out.write(chunk)
        write_star(star_path, meta, _set_image(optics, apix, box))
    return star_path


def _listed(values) -> str:
    return "[" + ", ".join(f"{v:g}" for v in sorted(values)) + "]"


def _set_image(optics: pd.DataFrame, apix: float, box: int) -> pd.DataFrame:
    return optics.assign(rlnImagePixelSize=float(apix), rlnImageSize=int(box))


def _find(name: str, table_path: Path, root, kind: str) -> Path:
    """The file ``name`` (from the table ``table_path``) relative to ``root`` (if given), the working directory or
    the table's folder, else its bare file name in the table's folder; :class:`InputError` naming the ``kind`` of
    file when it is in none."""
    folders = ([Path(root)] if root is not None else []) + [Path.cwd(), table_path.parent]
    candidates = [folder / name for folder in folders] + [table_path.parent / Path(name).name]
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    if found is None:
        raise InputError(f"{kind} {name} not found (looked in {', '.join(map(str, folders))}, and for "
                         f"{Path(name).name} in {table_path.parent})", table_path)
    return found


def _one_pixel_size(meta, optics, override, header, table_path) -> tuple[float, float | None]:
    """(the stack's pixel size in Å, the one the input states or None): ``override``, else the optics groups used,
    else ``header()`` (the size the files' headers state, or None). Optics groups at different pixel sizes are
    refused, ``override`` or not: one value for all would mislabel some of them."""
    override = _checked_apix(override)
    groups = optics[optics["rlnOpticsGroup"].isin(meta["rlnOpticsGroup"])] if "rlnOpticsGroup" in meta else optics
    stated = groups.dropna(subset=["rlnImagePixelSize"]).drop_duplicates("rlnImagePixelSize")
    if len(stated) > 1:
        listed = ", ".join(f"{row.rlnImagePixelSize:g} Å (optics group {row.rlnOpticsGroup})"
                           for row in stated.sort_values("rlnImagePixelSize").itertuples())
        raise InputError(f"particles come at several pixel sizes: {listed}; emgroup needs one: resample them to one "
                         "pixel size first (relion_image_handler --rescale_angpix A --new_box D, one group at a "
                         "time) or keep one group (relion_star_handler --select rlnOpticsGroup --minval G --maxval G)",
                         table_path)
    stated = float(stated["rlnImagePixelSize"].iloc[0]) if len(stated) else header()
    if override is None and stated is None:
        raise InputError("no pixel size in the metadata or the file headers; pass --apix", table_path)
    return (stated if override is None else override), stated


def _checked_apix(apix: float | None) -> float | None:
    """``apix`` as a float; :class:`InputError` unless it is None or a positive finite number of Å."""
    if apix is not None and not (math.isfinite(apix) and apix > 0):
        raise InputError(f"--apix {apix}: not a pixel size (a positive number of Å)")
    return None if apix is None else float(apix)


def _rescaled_origins(meta: pd.DataFrame, factor: float) -> pd.DataFrame:
    """``meta`` with its shifts in Å (``rlnOriginX/Y/ZAngst``) multiplied by ``factor``."""
    return meta.assign(**{c: meta[c] * factor for c in ORIGIN_COLUMNS if c in meta})
