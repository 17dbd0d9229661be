"""Atomic file writes and Kaldi-style text maps (`key value...` per line)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from apm.utils.errors import ApmError

# The names atomic_path and atomic_dir give their temporaries: `.<name>.<8 mkstemp chars>.tmp`.
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`.

    Readers never see a half-written file and a killed run leaves no partial output, only a
    `.<name>.XXXXXXXX.tmp` file: the recipe removes those when it starts (remove_stale_temps).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs should be as open as open()'s
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory next to `path`; when the block succeeds it replaces
    `path` (old contents removed). On failure `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temps(root: str | os.PathLike) -> int:
    """Remove the temporaries (files and directories named TEMP_NAME) that writers killed in
    the middle of atomic_path / atomic_dir left under `root` (symlinks not followed); returns
    how many. Only safe while no other process writes there: the recipe calls it under its
    exclusive lock of the directory (utils/recipe.sh)."""
    removed = 0
    for top, dirs, files in os.walk(root):
        for name in [d for d in dirs if TEMP_NAME.match(d)]:
            shutil.rmtree(os.path.join(top, name), ignore_errors=True)
            dirs.remove(name)
            removed += 1
        for name in files:
            if TEMP_NAME.match(name):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(top, name))
                    removed += 1
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """`open(path, mode)` that only replaces `path` once the block finished without error."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def read_kv(path: str | os.PathLike, *, allow_empty_value: bool = False) -> dict[str, str]:
    """Read a Kaldi text map (`utt2lang`, `wav.scp`, ...) into {key: rest-of-line}.

    Duplicate keys and lines without a value are errors naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise ApmError(f"{path}: file not found")
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            key, value = (line.split(maxsplit=1) + [""])[:2]  # spaces or tabs
            if not value and not allow_empty_value:
                raise ApmError(f"{path}:{lineno}: key '{key}' has no value")
            if key in out:
                raise ApmError(f"{path}:{lineno}: duplicate key '{key}'; ids must be unique")
            out[key] = value
    return out


def write_kv(path: str | os.PathLike, mapping: Mapping[str, object]) -> None:
    """Write {key: value} sorted by key (Kaldi's `LC_ALL=C sort` order), atomically."""
    with atomic_write(path, encoding="utf-8") as f:
        for key in sorted(mapping):
            f.write(f"{key} {mapping[key]}\n")


def portable_path(path: str | os.PathLike) -> str:
    """How a generated file names `path`: relative to the current directory (the recipe
    directory, where run.sh runs every stage) when it lies under it, else absolute. kaldiio
    and lhotse open such paths as they are, so a recipe directory moved as a whole, with its
    data/ and exp/, stays valid."""
    absolute = os.path.abspath(path)
    cwd = os.getcwd()
    if absolute == cwd:
        return "."
    if absolute.startswith(cwd.rstrip(os.sep) + os.sep):
        return os.path.relpath(absolute, cwd)
    return absolute
