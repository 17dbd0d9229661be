"""Phone tables (`phones.txt`: `symbol id` per line) and their normalisation.

Every alignment this package writes uses one convention: silence is `SIL` with id 0 and the
other phones follow in the order of the source table, ids 1..K-1 without gaps, so a label is
directly a class index for the phoneme branch. Foreign tables (an eSpeak oracle, Kaldi's
`phones.txt` with `<eps>`, disambiguation symbols and word-position suffixes) are mapped onto
that convention by a lookup array from source id to output id.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apm.utils.errors import ApmError
from apm.utils.io import atomic_write

SILENCE = "SIL"
SILENCE_ID = 0
_KALDI_POSITION = re.compile(r"_[BEIS]$")
_KALDI_DISAMBIG = re.compile(r"^#\d+$")


@dataclass(frozen=True)
class PhoneTable:
    """Phone symbols indexed by id; `symbols[0]` is always `SIL`."""

    symbols: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.symbols or self.symbols[0] != SILENCE:
            raise ApmError(
                f"a phone table must start with {SILENCE} (id 0), got {self.symbols[:3]}"
            )
        if len(set(self.symbols)) != len(self.symbols):
            raise ApmError(f"duplicate symbols in phone table {self.symbols}")

    def __len__(self) -> int:
        return len(self.symbols)

    def id(self, symbol: str) -> int:
        return self.symbols.index(symbol)

    def write(self, path: str | os.PathLike) -> None:
        with atomic_write(path, encoding="utf-8") as f:
            for i, sym in enumerate(self.symbols):
                f.write(f"{sym} {i}\n")


def normalise_table(
    table: dict[str, int],
    silence: Iterable[str],
    merge_positions: bool = False,
    source: str = "phone table",
) -> tuple[PhoneTable, np.ndarray]:
    """Map a foreign table onto our convention.

    Symbols in `silence` become `SIL` (0); `<eps>` and disambiguation symbols `#n` are dropped
    (a label using them is an error later); with `merge_positions`, Kaldi's word-position
    variants `AA_B AA_E AA_I AA_S` collapse onto `AA`. Returns the table and a lookup array
    from source id to output id (-1 for dropped ids).
    """
    silence = set(silence)
    symbols = [SILENCE]
    lookup = np.full(max(table.values()) + 1, -1, dtype=np.int32)
    for sym, src_id in sorted(table.items(), key=lambda kv: kv[1]):
        if sym == "<eps>" or _KALDI_DISAMBIG.match(sym):
            continue
        base = _KALDI_POSITION.sub("", sym) if merge_positions else sym
        if base in silence or base == SILENCE:
            lookup[src_id] = SILENCE_ID
            continue
        if base not in symbols:
            symbols.append(base)
        lookup[src_id] = symbols.index(base)
    if not (lookup == SILENCE_ID).any():
        raise ApmError(
            f"{source}: no silence phone among {sorted(table)[:10]}...; expected one of "
            f"{sorted(silence | {SILENCE})} (set the silence symbols in the align conf)"
        )
    return PhoneTable(tuple(symbols)), lookup


def map_labels(labels: np.ndarray, lookup: np.ndarray, utt: str, source: str) -> np.ndarray:
    """Apply a source-id -> output-id lookup; ids outside the table are an error naming `utt`."""
    labels = np.asarray(labels, dtype=np.int64)
    bad = (labels < 0) | (labels >= len(lookup))
    if not bad.any():
        mapped = lookup[labels]
        bad = mapped < 0
        if not bad.any():
            return mapped.astype(np.int32)
    raise ApmError(
        f"utterance {utt} in {source}: phone id {int(labels[bad][0])} is not a phone of its "
        "phones.txt (or is <eps>/#n); regenerate the alignment with the matching phones.txt"
    )


def model_phones(mdef: str | os.PathLike) -> list[str]:
    """Context-independent phones of a Sphinx acoustic model, from its `mdef` (binary or text)."""
    mdef = Path(mdef)
    if not mdef.is_file():
        raise ApmError(f"{mdef}: acoustic model definition not found; check `hmm` in the conf")
    data = mdef.read_bytes()
    if data[:4] in (b"BMDF", b"FDMB"):
        return _binary_mdef_phones(data)
    return _text_mdef_phones(data.decode("ascii", errors="replace"), mdef)


def _binary_mdef_phones(data: bytes) -> list[str]:
    # Layout (pocketsphinx bin_mdef.c): magic, version, description length + text, then ten
    # int32 header fields starting with n_ciphone, then n_ciphone NUL-terminated names.
    endian = "<" if data[:4] == b"BMDF" else ">"
    desc_len = struct.unpack_from(endian + "i", data, 8)[0]
    pos = 12 + desc_len
    n_ciphone = struct.unpack_from(endian + "i", data, pos)[0]
    pos += 10 * 4
    names = data[pos:].split(b"\0", n_ciphone)[:n_ciphone]
    return [n.decode("ascii") for n in names]


def _text_mdef_phones(text: str, path: Path) -> list[str]:
    # Text mdef: a `n_base` count line, then one line per phone `base lft rt wpos attrib ...`
    # where CI phones have `-` contexts.
    lines = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    n_base = next((int(f[0]) for f in lines if len(f) == 2 and f[1] == "n_base"), None)
    if n_base is None:
        raise ApmError(f"{path}: not a Sphinx mdef (no n_base line)")
    ci = [f[0] for f in lines if len(f) > 4 and f[1] == "-" and f[2] == "-"]
    return ci[:n_base]
