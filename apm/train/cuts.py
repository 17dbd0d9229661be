"""Training cuts with their per-frame labels as lhotse custom fields, Kaldi scp interop and
lhotse Shar shards.

Stage 2 writes the VAD decisions to `vad.scp` and stage 3 the frame phone ids to `ali.scp`
(Kaldi tables, for interop with Kaldi tools). For training, each cut carries them as lhotse
`TemporalArray` custom fields, `cut.custom["vad"]` and `cut.custom["ali"]`, read with
`cut.load_custom(name)`:

 - imported from the scp files (`label_field`, `apm.train.data.labelled_cuts`), a field
   points into the Kaldi ark at its
   byte offset, read by the `apm_kaldi_ark` storage reader registered here (a binary int32
   vector in one `np.frombuffer`, `apm.features.readers.read_int32_vector`; anything else,
   such as VAD float vectors, through kaldiio);
 - read from Shar shards (`read_shar`), the fields are the arrays the shards hold.
`export_labels` writes the fields back as Kaldi ark/scp pairs.

Frame counts are checked exactly as before: `load_custom` trims a field to the cut's duration
without saying so (and does not fix a +-1 frame difference the way `load_features` does), so
`load_label` compares the stored length with the features' frame count first
(`apm.utils.frames.fit_frame_count`: up to FRAME_TOLERANCE frames are fixed, more is an error
naming the cut).

Shar (`export_shar`, `CutSet.to_shar`): features, vad and ali (numpy arrays) in tar shards of
`shard_size` cuts, for reading on nodes without the feature store. Shar is read sequentially,
so a training set read from Shar is held in memory (`train.data: memory`); its batches and
resume are then exactly those of the feature store. lhotse's own streaming of Shar through
its samplers resumes only approximately in lhotse 1.33 (sampler `state_dict` with prefetching
workers, lhotse issue 785), which is why training does not stream Shar.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from lhotse import CutSet
from lhotse.array import Array, TemporalArray
from lhotse.features.io import FeaturesReader, register_reader

from apm.features.readers import read_int32_vector
from apm.utils.arkio import write_ark_scp
from apm.utils.errors import ApmError
from apm.utils.frames import FRAME_SHIFT, FRAME_TOLERANCE, fit_frame_count

LABELS = ("vad", "ali")  # custom fields: VAD decision (float 0/1), frame phone id (int32)
KALDI_ARK = "apm_kaldi_ark"
SHAR_FIELDS = {"features": "numpy", "vad": "numpy", "ali": "numpy"}
_ARK_OFFSET = re.compile(r"^(?P<ark>.+):(?P<offset>\d+)$")


@register_reader
class KaldiArkReader(FeaturesReader):
    """lhotse storage reader of one Kaldi ark entry: `storage_path` the ark, `storage_key` the
    byte offset of the entry (what an scp line names after the key)."""

    name = KALDI_ARK

    def __init__(self, storage_path: str | os.PathLike, *args, **kwargs) -> None:
        super().__init__()
        self.ark = storage_path

    def read(
        self, key: str, left_offset_frames: int = 0, right_offset_frames: int | None = None
    ) -> np.ndarray:
        values = np.asarray(read_int32_vector(self.ark, int(key), key)).reshape(-1)
        return values[left_offset_frames:right_offset_frames]


def scp_entries(path: str | os.PathLike, what: str) -> dict[str, tuple[str, int]]:
    """{key: (ark, byte offset)} of a Kaldi scp whose lines are `key ark:offset`."""
    path = Path(path)
    if not path.is_file():
        raise ApmError(f"{path}: {what} not found")
    out = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.split(None, 1)
            m = _ARK_OFFSET.match(fields[1].strip()) if len(fields) == 2 else None
            if m is None:
                raise ApmError(
                    f"{path}:{number}: expected 'key ark:offset', got {line.strip()!r}; write "
                    "the table to an ark first (e.g. Kaldi copy-vector ark:... ark,scp:...)"
                )
            out[fields[0]] = (sys.intern(m["ark"]), int(m["offset"]))
    return out


def label_field(ark: str, offset: int, length: int) -> TemporalArray:
    """A custom field pointing at one entry of a Kaldi ark."""
    array = Array(storage_type=KALDI_ARK, storage_path=str(ark), storage_key=str(offset),
                  shape=[int(length)])  # fmt: skip
    return TemporalArray(array=array, temporal_dim=0, frame_shift=FRAME_SHIFT, start=0.0)


def load_label(cut, name: str, frames: int | None = None) -> np.ndarray:
    """Custom field `name` of `cut` (`load_custom`), one value per feature frame (`frames`,
    default the cut's): a length within FRAME_TOLERANCE frames is fitted, more is an error."""
    field = cut.custom.get(name) if cut.custom else None
    if field is None:
        raise ApmError(f"cut {cut.id}: no '{name}' field; attach it from its scp (stage 2/3)")
    frames = cut.num_frames if frames is None else frames
    stored = int(field.shape[0])
    if abs(stored - frames) > FRAME_TOLERANCE:
        fit_frame_count(np.zeros(stored), frames, cut.id)  # raises, naming the cut
    return fit_frame_count(np.asarray(cut.load_custom(name)).reshape(-1), frames, cut.id)


def export_labels(cuts: Iterable, name: str, ark: str | os.PathLike) -> int:
    """Write field `name` of every cut to a Kaldi ark and its scp (`ark` with suffix .scp):
    `vad.scp` as float32 0/1, `ali.scp` as int32, as stages 2 and 3 write them."""
    dtype = np.int32 if name == "ali" else np.float32
    return write_ark_scp(((c.id, load_label(c, name)) for c in cuts), ark, dtype=dtype)


def export_shar(cuts: CutSet, out_dir: str | os.PathLike, shard_size: int = 1000) -> list[str]:
    """Write `cuts` (features and their vad/ali fields) as Shar shards under `out_dir`; the
    paths of the cut manifests written. Features are stored as float32 numpy arrays, so a set
    read back from the shards trains exactly as from the feature store."""
    cuts = CutSet.from_cuts(cuts)
    first = next(iter(cuts), None)
    if first is None:
        raise ApmError(f"{out_dir}: no cuts to export")
    fields = {k: v for k, v in SHAR_FIELDS.items() if k == "features" or k in (first.custom or {})}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = cuts.to_shar(out, fields=fields, shard_size=shard_size)
    return [str(p) for p in written["cuts"]]


def is_shar_dir(path: str | os.PathLike) -> bool:
    return any(Path(path).glob("cuts.*.jsonl*"))


def read_shar(in_dir: str | os.PathLike) -> Iterator:
    """The cuts of the Shar shards in `in_dir`, with their features and fields in memory."""
    if not is_shar_dir(in_dir):
        raise ApmError(f"{in_dir}: no Shar shards (cuts.000000.jsonl.gz ...); see export_shar")
    yield from CutSet.from_shar(in_dir=str(in_dir))
