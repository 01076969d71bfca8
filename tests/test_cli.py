"""The `emgroup` entry point: the glibc malloc settings it restarts itself with."""

import os
import platform
import subprocess
import sys

import pytest

from emgroup.cli import main as cli_main

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the restart happens on glibc only")


def test_entry_point_restarts_once_with_the_malloc_settings():
    env = {name: value for name, value in os.environ.items() if name not in cli_main.MALLOC_ENV}
    probe = ("import os, sys; from emgroup.cli import main as m; "
             "m.cli = lambda: print(*(os.environ.get(k) for k in m.MALLOC_ENV), sys.argv[1:]); m.main()")
    done = subprocess.run([sys.executable, "-c", probe, "train", "--help"], env=env, capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == [*cli_main.MALLOC_ENV.values(), "['train',", "'--help']"]


def test_settings_the_user_chose_are_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    monkeypatch.setattr(cli_main.os, "execv", lambda *args: pytest.fail("restarted although nothing was missing"))
    monkeypatch.setattr(cli_main, "cli", lambda: None)
    cli_main.main()
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == "65536"


def test_python_m_emgroup_runs_through_the_restart():
    env = {name: value for name, value in os.environ.items() if name not in cli_main.MALLOC_ENV}
    done = subprocess.run([sys.executable, "-m", "emgroup", "--version"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "emgroup, version" in done.stdout
