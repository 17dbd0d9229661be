"""Alignment label tables: int32 vectors written with the shared ark/scp writer, read back with
kaldiio."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import kaldiio
import numpy as np

from apm.features.readers import read_alignment_scp
from apm.utils.arkio import write_ark_scp
from apm.utils.errors import ApmError


def write_labels(
    items: Iterable[tuple[str, np.ndarray]], ark: str | os.PathLike, scp: str | os.PathLike
) -> int:
    """Alignment labels `(key, vector)` to `ark` + `scp` with the shared writer
    (`apm.utils.arkio.write_ark_scp`), as the int32 vectors the ali.scp format promises."""
    return write_ark_scp(items, ark, scp, dtype=np.int32)


def read_labels(path: str | os.PathLike) -> Mapping[str, np.ndarray]:
    """Lazy {utt: int vector} from an `ali.scp` (`read_alignment_scp`) or `ali.ark` (kaldiio),
    errors named."""
    path = Path(path)
    if not path.is_file():
        raise ApmError(f"{path}: alignment file not found")
    try:
        if path.suffix == ".scp":  # the training path's vectorised int32 reader
            return read_alignment_scp(path)
        return dict(kaldiio.load_ark(str(path)))
    except Exception as e:  # kaldiio raises bare ValueError/OSError/... on bad files
        raise ApmError(f"{path}: cannot read as a Kaldi ark/scp of integer vectors: {e}") from e
