"""Stage 3: frame-level phone labels (PocketSphinx all-phone virtual labels, the eSpeak oracle,
or Kaldi per-frame alignments), one int32 id per 10 ms feature frame, SIL = 0."""

from apm.align.arkio import read_labels, write_labels
from apm.align.config import AlignConfig, load_align_config
from apm.align.phones import SILENCE, SILENCE_ID, PhoneTable
from apm.align.pipeline import align_phones

__all__ = [
    "SILENCE",
    "SILENCE_ID",
    "AlignConfig",
    "PhoneTable",
    "align_phones",
    "load_align_config",
    "read_labels",
    "write_labels",
]
