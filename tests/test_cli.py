"""apm.bin.cli: OSError (full disk, unwritable or bogus directories) ends every tool with one
`ERROR` line naming the path and the system's reason, exit status 1, no traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
from test_backend import make_system

from apm.bin import cli
from apm.bin.cli import describe_oserror
from apm.utils import atomic_write


def _run_main(monkeypatch, run, *argv):
    monkeypatch.setattr(sys, "argv", ["tool", *argv])
    import argparse

    with pytest.raises(SystemExit) as e:
        cli.main(argparse.ArgumentParser(prog="tool"), run)
    return e.value.code


def test_full_disk_names_the_file(monkeypatch, tmp_path, capsys):
    """A write on a full disk raises OSError(ENOSPC) with no filename (here at fsync, where
    delayed allocation reports it); the message still names the file being written."""
    target = tmp_path / "exp" / "sys" / "final.score"

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def run(args):
        with atomic_write(target, encoding="utf-8") as f:
            f.write("x\n")

    monkeypatch.setattr(os, "fsync", no_space)
    assert _run_main(monkeypatch, run) == 1
    err = capsys.readouterr().err
    assert f"ERROR [tool] cannot write {target}: No space left on device" in err
    assert "Traceback" not in err
    assert not target.exists() and not list(target.parent.glob("*.tmp"))


def test_describe_oserror():
    e = OSError(errno.EROFS, "Read-only file system", "/x/y")
    assert describe_oserror(e) == "cannot write /x/y: Read-only file system"
    e = OSError(errno.ENOTDIR, "Not a directory", "/a/b", None, "/c/d")
    assert describe_oserror(e) == "cannot access /a/b -> /c/d: Not a directory"
    assert describe_oserror(OSError(errno.ENOSPC, "No space left on device")) == (
        "cannot write a file: No space left on device"
    )


def _score(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(cli.__file__).rsplit("/apm/", 1)[0]}
    return subprocess.run(
        [sys.executable, "-m", "apm.bin.score", "--data", "data", *args, "exp/sys", "task_full"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip


def test_unwritable_directories_in_a_real_tool(tmp_path):
    """Root ignores permission bits, so the unwritable "directory" is a regular file."""
    make_system(tmp_path)
    (tmp_path / "not_a_dir").write_text("a file\n")
    r = _score(tmp_path, "--log-file", "not_a_dir/log/score.log")  # the log cannot be opened
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "ERROR" in r.stderr and "not_a_dir/log: Not a directory" in r.stderr
    (tmp_path / "exp/sys/scores").write_text("a file where the scores directory goes\n")
    r = _score(tmp_path)  # the outputs cannot be written
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "ERROR" in ln]
    assert len(lines) == 1 and "exp/sys/scores: File exists" in lines[0], r.stderr


def test_console_entry_points_name_the_tools():
    """pyproject [project.scripts]: each entry point is a tool's console() (its main)."""
    import importlib
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    assert {"apm-identify", "compute-cavg"} <= set(scripts)
    for target in scripts.values():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr))
