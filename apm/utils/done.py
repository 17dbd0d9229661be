"""The one "already done" mechanism: outputs are up to date when a record file beside them
holds the signature of the inputs they were made from.

A step computes `signature(files, settings)` over what it reads (file contents, and with
`follow_scp` the arks an scp names) and the settings that change its result; `is_done`
compares it with the record, `mark_done` writes the record atomically once the outputs are
complete. Content, not modification times: a touched but unchanged input does not redo work,
a regenerated one with other content does, and copies between machines keep their records.

Users: stage 4 (`exp/<system>/inputs.sha256`: checkpoints resume only on the same data),
stage 5 (`xvectors/<set>/.done`: a retrained model or other features redo a set). The shell
front of the same idea is `utils/stage.sh` (`$exp/.done/stage<N>.<name>` holds a stage's
command line, config contents and watched inputs; equal records skip the stage). Per-job
resume inside a step (alignment jobs' summary fingerprints in `apm.align.decode`, feature
jobs in `apm.features.pipeline`) keeps finished parts of an unfinished step; it is a
different question (which parts of this run survive a kill), answered next to the jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from apm.utils.io import atomic_write


def signature(
    files: Iterable[str | os.PathLike] = (), settings: Any = None, *, follow_scp: bool = False
) -> str:
    """sha256 (hex) of `settings` (JSON, keys sorted; None: none) and the bytes of `files` in
    the order given; a missing file adds nothing (creating it adds its bytes). With `follow_scp`, an existing `*.scp` file is followed by the
    arks its lines name (sorted, each once; relative names resolve from the current
    directory, as kaldiio opens them)."""
    return _digest(list(_hashed_files(files, follow_scp)), settings)


def cached_signature(
    files: Iterable[str | os.PathLike],
    settings: Any = None,
    *,
    follow_scp: bool = False,
    cache: str | os.PathLike,
) -> str:
    """`signature(files, settings, follow_scp=...)`, the same value, but not re-read while
    every file it covers keeps its (absolute path, size, mtime_ns, inode): those and the
    settings key the result in the JSON file `cache` (written atomically; a cache that
    cannot be read or written is only a lost shortcut). Any change of a file's size or
    modification time, or a file added or removed, reads everything again; a touched but
    unchanged file then gives the same signature as before. The files are stat'ed before they
    are read, so a file changed while being hashed is read again next time."""
    paths = list(_hashed_files(files, follow_scp))
    stats = []
    for path in paths:
        st = path.stat()
        stats.append([os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino])
    key_text = json.dumps([settings, stats], sort_keys=True, default=str)
    key = hashlib.sha256(key_text.encode()).hexdigest()
    cache = Path(cache)
    entries = _read_cache(cache)
    if isinstance(entries.get(key), str):
        return entries[key]
    sig = _digest(paths, settings)
    entries.pop(key, None)
    entries[key] = sig
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache, encoding="utf-8") as f:
            json.dump(dict(list(entries.items())[-CACHE_ENTRIES:]), f, indent=0)
    except OSError:
        pass
    return sig


CACHE_ENTRIES = 8  # signatures a cache file keeps (the most recent)


def _read_cache(cache: Path) -> dict[str, str]:
    try:
        entries = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _hashed_files(files: Iterable[str | os.PathLike], follow_scp: bool) -> Iterator[Path]:
    """The existing files `signature` reads, in its order (each scp followed by its arks)."""
    for path in map(Path, files):
        if not path.is_file():
            continue
        yield path
        if follow_scp and path.suffix == ".scp":
            yield from (ark for ark in _arks(path) if ark.is_file())


def _digest(paths: list[Path], settings: Any) -> str:
    h = hashlib.sha256()
    if settings is not None:
        h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _arks(scp: Path) -> list[Path]:
    lines = scp.read_text(encoding="utf-8").splitlines()
    names = {line.split(maxsplit=1)[1].rsplit(":", 1)[0] for line in lines if " " in line}
    return [Path(name) for name in sorted(names)]


def recorded(record: str | os.PathLike) -> str | None:
    """The signature a record holds, None when there is none."""
    record = Path(record)
    return record.read_text(encoding="utf-8").strip() if record.is_file() else None


def is_done(record: str | os.PathLike, sig: str) -> bool:
    """True when `record` holds `sig`: the outputs it stands for were made from these inputs."""
    return recorded(record) == sig


def mark_done(record: str | os.PathLike, sig: str) -> None:
    """Record `sig` atomically; call it only once the outputs are complete."""
    with atomic_write(record, encoding="utf-8") as f:
        f.write(sig + "\n")
