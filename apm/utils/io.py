"""Atomic file writes and Kaldi-style text maps (`key value...` per line)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from apm.utils.errors import ApmError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`.

    Readers never see a half-written file and a killed run leaves no partial output
    (only a `.tmp` file that the next run overwrites).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
            key, _, value = line.partition(" ")
            value = value.strip()
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
