"""Atomic Kaldi ark+scp writing of int32 label vectors, and reading them back with kaldiio."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import kaldiio
import numpy as np

from apm.data.kaldi_dir import portable_path
from apm.utils.errors import ApmError
from apm.utils.io import atomic_path


def write_ark_scp(
    items: Iterable[tuple[str, np.ndarray]], ark: str | os.PathLike, scp: str | os.PathLike
) -> int:
    """Write `(key, int32 vector)` pairs to `ark` and its index `scp`; returns the count.

    Both files appear only once complete (the ark first, then the scp that points into it);
    the scp names the ark as `portable_path` gives it (relative to the current directory
    when under it, else absolute), so a recipe directory moved as a whole stays valid.
    """
    ark, scp = Path(ark), Path(scp)
    ark_name = portable_path(ark)
    count = 0
    with atomic_path(scp) as tmp_scp, atomic_path(ark) as tmp_ark:
        with open(tmp_ark, "wb") as fa, open(tmp_scp, "w", encoding="utf-8") as fs:
            for key, vec in items:
                offset = fa.tell() + len(key.encode("utf-8")) + 1
                kaldiio.save_ark(fa, {key: np.asarray(vec, dtype=np.int32)})
                fs.write(f"{key} {ark_name}:{offset}\n")
                count += 1
            for f in (fa, fs):
                f.flush()
                os.fsync(f.fileno())
    return count


def read_labels(path: str | os.PathLike) -> Mapping[str, np.ndarray]:
    """Lazy {utt: int vector} from an `ali.scp` or `ali.ark` (kaldiio), errors named."""
    path = Path(path)
    if not path.is_file():
        raise ApmError(f"{path}: alignment file not found")
    try:
        if path.suffix == ".scp":
            return kaldiio.load_scp(str(path))
        return dict(kaldiio.load_ark(str(path)))
    except Exception as e:  # kaldiio raises bare ValueError/OSError/... on bad files
        raise ApmError(f"{path}: cannot read as a Kaldi ark/scp of integer vectors: {e}") from e
