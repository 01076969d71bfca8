"""Atomic file writes: write to a temporary name in the target folder, then rename into place.

Temporary names are ``.STEM.HOST-PID-RANDOM.tmpSUFFIX``: a later write of the same file removes those that a killed
emgroup process on this host left behind. Files written inside :func:`written_together` are renamed into place
together, when all of them are complete; :func:`output_folder` makes a command's output folder and removes it
again when the command fails. A full disk or a folder that cannot be written is an
:class:`~emgroup.errors.InputError` naming the file.
"""

import contextlib
import contextvars
import errno
import glob
import os
import re
import socket
import tempfile
from pathlib import Path

from emgroup.errors import InputError
from emgroup.signals import signals_held

#: errors of a write that say where the output should go cannot take it
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())
#: the renames waiting for the end of the innermost :func:`written_together` block (None outside one)
_together: contextvars.ContextVar[list | None] = contextvars.ContextVar("written_together", default=None)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success rename it to ``path`` (inside :func:`written_together`:
    at the end of that block), on error delete it.

    The temporary name keeps the final suffix, so libraries that look at it (mrcfile, h5py) behave.
    """
    path = Path(path)
    with _as_input_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{_HOST}-{os.getpid()}-", suffix=f".tmp{path.suffix}",
                                   dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        with _as_input_error(path):
            yield Path(tmp)
        pending = _together.get()
        if pending is None:
            _rename([(tmp, path)])
        else:
            pending.append((tmp, path))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def written_together():
    """Every file written with :func:`atomic_path` inside the block is renamed into place at its end, all at once
    (SIGINT and SIGTERM held back meanwhile), or, on error, none is. A block inside another joins the outer one."""
    if _together.get() is not None:
        yield
        return
    pending = []
    token = _together.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    finally:
        _together.reset(token)
    _rename(pending)


@contextlib.contextmanager
def output_folder(path):
    """The folder ``path`` for a command's outputs, created with its missing parents; when the block fails, the
    folders it created are removed again if they are empty. :class:`InputError` when ``path`` is a file or cannot
    be created or written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError("output folder is a file", path)
    created = [folder for folder in (path, *path.parents) if not folder.exists()]  # deepest first
    try:
        with _as_input_error(path):
            path.mkdir(parents=True, exist_ok=True)
            probe = tempfile.TemporaryFile(dir=path)  # the one sure test: permissions, read-only mounts, ACLs
            probe.close()
        yield path
    except BaseException:
        if created:  # empty subfolders the command made in it first, then the folders made here
            subfolders = [Path(top) for top, _, _ in os.walk(path, topdown=False) if Path(top) != path]
            for folder in subfolders + created:
                try:
                    folder.rmdir()
                except FileNotFoundError:
                    continue
                except OSError:  # not empty: keep it and what holds it
                    break
        raise


def _rename(renames: list) -> None:
    """``os.replace`` each (temporary, final) pair with SIGINT/SIGTERM held back; on error undo those done."""
    with signals_held():
        done = []
        try:
            for tmp, path in renames:
                with _as_input_error(path):
                    os.replace(tmp, path)
                done.append(path)
        except BaseException:
            for path in done:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            for tmp, _ in renames[len(done):]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            raise


@contextlib.contextmanager
def _as_input_error(path: Path):
    """An OSError of :data:`WRITE_ERRORS` (also as the cause of another exception, as torch raises it) becomes an
    :class:`InputError` naming ``path``."""
    try:
        yield
    except InputError:
        raise
    except Exception as err:
        cause = err
        while cause is not None and not (isinstance(cause, OSError) and cause.errno in WRITE_ERRORS):
            cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
        if cause is None:
            raise
        raise InputError(f"cannot write ({os.strerror(cause.errno)})", path) from None


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of ``path`` left by emgroup processes of this host that no longer run."""
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.{re.escape(_HOST)}-(\d+)-[^.]+\.tmp{re.escape(path.suffix)}")
    for candidate in path.parent.glob(f".{glob.escape(path.stem)}.*.tmp{glob.escape(path.suffix)}"):
        match = pattern.fullmatch(candidate.name)
        if match and not _running(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()


def _running(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
