"""Reading stage 2's output (`data/fbank/<set>/`) in later stages.

    cuts = load_cuts("data/fbank/train")          # lhotse CutSet; cut.load_features()
    feats = load_feats("data/fbank/train")        # {utt: float32 [frames, bins]}, lazy
    vad = load_vad("data/fbank/train")            # {utt: float32 [frames]} of 0/1

Features are raw log mel energies (Kaldi scale, no CMN): the consumer normalises them.
Relative paths inside these files are relative to the recipe directory (stage 2 writes them
so, `apm.features.pipeline`): call these from there, as run.sh does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import kaldiio
import numpy as np
from lhotse import CutSet

from apm.utils import ApmError


def _need(path: Path) -> Path:
    if not path.is_file():
        raise ApmError(f"{path}: not found; run stage 2 (features) for this set first")
    if path.suffix == ".scp":
        with open(path, encoding="utf-8") as f:
            fields = f.readline().split(maxsplit=1)
        ark = fields[1].rsplit(":", 1)[0] if len(fields) == 2 else ""
        if ark and not os.path.isabs(ark) and not os.path.exists(ark):
            raise ApmError(
                f"{path}: names {ark}, which is relative to the recipe directory but not found "
                f"from {os.getcwd()}; run from the recipe directory (egs/olr)"
            )
    return path


def load_cuts(fbank_dir: str | os.PathLike) -> CutSet:
    """The set's cuts (eager, indexable by id) with features: `cut.load_features()`."""
    return CutSet.from_file(_need(Path(fbank_dir) / "cuts.jsonl.gz")).to_eager()


def load_feats(fbank_dir: str | os.PathLike) -> Mapping[str, np.ndarray]:
    """feats.scp as a lazy {utt: float32 [frames, bins]} mapping (kaldiio)."""
    return kaldiio.load_scp(str(_need(Path(fbank_dir) / "feats.scp")))


def load_vad(fbank_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """vad.scp read in full: {utt: float32 [frames] of 0/1}."""
    scp = kaldiio.load_scp(str(_need(Path(fbank_dir) / "vad.scp")), max_cache_fd=16)
    return {utt: np.asarray(scp[utt], dtype=np.float32) for utt in scp}
