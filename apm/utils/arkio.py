"""The one Kaldi ark+scp writer of the project (vectors and matrices of any numpy dtype).

Every stage that writes an ark/scp pair goes through `write_ark_scp`: alignments (`ali.scp`),
x-vectors and scores (`xvector.scp`, `logits.scp`, `confidence.scp`), VAD and toy data. The
pair appears only once complete (the ark first, then the scp that points into it; a killed run
leaves only `.tmp` files), keys are sorted when given as a mapping, the values keep their dtype
unless one is asked for, and the scp names the ark as `portable_path` gives it (relative to
the recipe directory when under it), so a recipe directory moved as a whole stays valid.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import kaldiio
import numpy as np
from numpy.typing import DTypeLike

from apm.utils.errors import ApmError
from apm.utils.io import atomic_path, portable_path


def write_ark_scp(
    items: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    ark: str | os.PathLike,
    scp: str | os.PathLike | None = None,
    *,
    dtype: DTypeLike | None = None,
    ark_name: str | os.PathLike | None = None,
) -> int:
    """Write `items` to `ark` and its index `scp` (default: `ark` with suffix .scp); returns
    the number of entries.

    items: a mapping (written in sorted key order) or `(key, array)` pairs (written as they
        come, so a generator streams: the caller orders them).
    dtype: convert every array to it (e.g. int32 labels, float32 vectors); None keeps each
        array's own dtype.
    ark_name: how the scp names the ark, for an ark written in a staging directory that is
        moved into place afterwards; default `portable_path(ark)`.
    """
    ark = Path(ark)
    scp = ark.with_suffix(".scp") if scp is None else Path(scp)
    name = portable_path(ark) if ark_name is None else str(ark_name)
    pairs = ((k, items[k]) for k in sorted(items)) if isinstance(items, Mapping) else items
    count = 0
    with atomic_path(scp) as tmp_scp, atomic_path(ark) as tmp_ark:
        with open(tmp_ark, "wb") as fa, open(tmp_scp, "w", encoding="utf-8") as fs:
            for key, value in pairs:
                if not key or any(c.isspace() for c in key):
                    raise ApmError(f"{ark}: key {key!r} is empty or has white space; Kaldi "
                                   "tables need one-word keys (rename the utterance)")  # fmt: skip
                array = np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
                offset = fa.tell() + len(key.encode("utf-8")) + 1  # after "<key> "
                kaldiio.save_ark(fa, {key: array})
                fs.write(f"{key} {name}:{offset}\n")
                count += 1
            for f in (fa, fs):  # both durable before the renames make them visible
                f.flush()
                os.fsync(f.fileno())
    return count
