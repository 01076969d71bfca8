"""Atomic writes: nothing left behind on error, usual permissions on success."""

import os
import stat

import pytest

from emgroup.io.atomic import atomic_path


def test_atomic_path_renames_on_success_with_umask_permissions(tmp_path):
    target = tmp_path / "out" / "file.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "file.mrcs"
    target.write_text("original")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.mrcs"]
