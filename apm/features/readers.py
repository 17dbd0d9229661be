"""Reading stage 2's output (`data/fbank/<set>/`) and preparing frames for a network.

The one place where training, extraction, inference tools and reports read features, VAD,
alignments and phone tables, and where frames are selected and mean-normalised:

    cuts = read_cuts("data/fbank/train")          # lazy lhotse CutSet; cut.load_features()
    feats = load_feats("data/fbank/train")        # lazy {utt: [frames, bins]}, --kaldi-copy true
    vad = read_scp(Path("data/fbank/train/vad.scp"), "VAD (vad.scp)")  # lazy {utt: [frames]}

Features are raw log mel energies (Kaldi scale, no CMN): `select_and_normalize` prepares them
the same way for every consumer:
 - VAD: only frames with `vad > 0.5` are kept (Kaldi `select-voiced-frames`);
 - CMN (`cmn: utterance`): the mean over the kept frames of the whole utterance is subtracted;
   `cmn: sliding` is Kaldi's x-vector recipe order (`apply-cmvn-sliding --cmn-window=300` over
   all frames, then `select-voiced-frames`); with `cmn: chunk` the mean of each
   training/extraction chunk is subtracted instead (`chunk_cmn`).
Relative paths inside these files are relative to the recipe directory (stage 2 writes them
so, `apm.features.pipeline`): call these from there, as run.sh does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import kaldiio
import numpy as np
from lhotse import CutSet

from apm.features.cmn import sliding_cmn
from apm.utils import ApmError, read_kv
from apm.utils.frames import fit_frame_count

CUTS = "cuts.jsonl.gz"
# lhotse's speed-perturbed copy of `<utt>`: `<utt>_sp<factor>` (`CutSet.perturb_speed`)
SPEED_PERTURBED = re.compile(r"^(?P<base>.+)_sp(?P<factor>\d+(?:\.\d+)?)$")


def perturbed_source(cut_id: str) -> tuple[str, float] | None:
    """`(<utt>, factor)` for a speed-perturbed copy id `<utt>_sp<factor>`, else None."""
    m = SPEED_PERTURBED.match(cut_id)
    return (m["base"], float(m["factor"])) if m else None


def is_speed_perturbed(cut_id: str) -> bool:
    return SPEED_PERTURBED.match(cut_id) is not None


def base_id(cut_id: str) -> str:
    """The original utterance of a speed-perturbed copy (`utt_sp0.9` -> `utt`)."""
    source = perturbed_source(cut_id)
    return source[0] if source else cut_id


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


def read_cuts(fbank_dir: str | os.PathLike) -> CutSet:
    """The set's cuts, lazily read, in file order."""
    return CutSet.from_file(_need(Path(fbank_dir) / CUTS))


def load_feats(fbank_dir: str | os.PathLike) -> Mapping[str, np.ndarray]:
    """The Kaldi copy, feats.scp, as a lazy {utt: float32 [frames, bins]} mapping (kaldiio).
    Stage 2 writes it only with --kaldi-copy true; our own readers use the cuts' store."""
    scp = Path(fbank_dir) / "feats.scp"
    if not scp.is_file() and (Path(fbank_dir) / CUTS).is_file():
        raise ApmError(
            f"{scp}: not found: stage 2 wrote the features only to the lilcom store "
            f"({Path(fbank_dir) / CUTS}, read with read_cuts and cut.load_features()); for a "
            "Kaldi copy rerun stage 2 with --kaldi-copy true (no fbank is recomputed)"
        )
    return kaldiio.load_scp(str(_need(scp)))


def load_vad(fbank_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """vad.scp read in full: {utt: float32 [frames] of 0/1}."""
    scp = kaldiio.load_scp(str(_need(Path(fbank_dir) / "vad.scp")), max_cache_fd=16)
    return {utt: np.asarray(scp[utt], dtype=np.float32) for utt in scp}


def read_scp(path: str | os.PathLike, what: str) -> Mapping[str, np.ndarray]:
    """A lazy kaldiio {key: array} table; `what` names it in the error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise ApmError(f"{path}: {what} not found")
    return kaldiio.load_scp(str(path))


# One binary Kaldi int32 vector element: a size byte (4) then the little-endian int32.
_INT32_ELEMENT = np.dtype([("size", "u1"), ("value", "<i4")])
_INT32_HEADER = b"\0B\x04"  # binary marker, then the size byte of the length field
INT32_VECTOR_HEAD = len(_INT32_HEADER) + 4  # header and the int32 element count
_ARK_OFFSET = re.compile(r"^(?P<ark>.+):(?P<offset>\d+)$")


class Int32VectorTable(Mapping):
    """A lazy {key: int32 vector} table from a Kaldi scp, as `kaldiio.load_scp` reads it,
    but a binary int32 vector (`\\0B`, then size byte 4 and the int32 length, then per element
    size byte 4 and the int32) is read with one `np.frombuffer` instead of kaldiio's loop over
    elements. Anything else an scp line can name (text arks, matrices, pipes, slices) goes to
    kaldiio as before. A truncated or corrupt entry is an ApmError naming key and file.
    Holds no open file, so it pickles into DataLoader workers."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._entries: dict[str, str] = {}
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                fields = line.split(None, 1)
                if len(fields) != 2:
                    raise ApmError(f"{self.path}:{number}: expected 'key ark:offset', got {line!r}")
                self._entries[fields[0]] = fields[1].rstrip()

    def __getitem__(self, key: str) -> np.ndarray:
        spec = self._entries[key]
        m = _ARK_OFFSET.match(spec)
        if m is None or spec.endswith("|") or "[" in spec:
            return kaldiio.load_mat(spec)
        return read_int32_vector(m["ark"], int(m["offset"]), key)

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries


def read_int32_vector(ark: str | os.PathLike, offset: int, key: str = "?") -> np.ndarray:
    """The entry at byte `offset` of `ark`: a binary int32 vector read in one go, or, when it
    is not one (text, a matrix), whatever kaldiio reads there."""
    with open(ark, "rb") as f:
        f.seek(offset)
        head = f.read(INT32_VECTOR_HEAD)
        if not head:
            raise ApmError(f"{ark}: entry '{key}' at byte {offset} is past the end of the file")
        announced = int.from_bytes(head[3:], "little", signed=True)
        rest = f.read(max(announced, 0) * _INT32_ELEMENT.itemsize) if _is_int32(head) else b""
    values = parse_int32_vector(head + rest, ark, offset, key)
    return kaldiio.load_mat(f"{ark}:{offset}") if values is None else values


def int32_vector_size(length: int) -> int:
    """Bytes of a binary Kaldi int32 vector of `length` elements."""
    return INT32_VECTOR_HEAD + length * _INT32_ELEMENT.itemsize


def _is_int32(head: bytes) -> bool:
    return head[: len(_INT32_HEADER)] == _INT32_HEADER


def parse_int32_vector(
    data: bytes, ark: str | os.PathLike, offset: int, key: str = "?"
) -> np.ndarray | None:
    """The binary int32 vector that `data` (bytes read from `offset` of `ark` on) starts with,
    checked (a truncated or corrupt one is an ApmError naming key and file); None when `data`
    holds something else (text, a matrix), which kaldiio reads."""
    if not _is_int32(data):
        return None
    if len(data) < INT32_VECTOR_HEAD:
        raise ApmError(f"{ark}: entry '{key}' at byte {offset} is truncated (no length)")
    length = int.from_bytes(data[3:INT32_VECTOR_HEAD], "little", signed=True)
    if length < 0:
        raise ApmError(f"{ark}: entry '{key}' at byte {offset} has length {length}")
    present = (len(data) - INT32_VECTOR_HEAD) // _INT32_ELEMENT.itemsize
    if present < length:
        raise ApmError(
            f"{ark}: entry '{key}' at byte {offset} is truncated: {length} int32 elements "
            f"announced, {present} present"
        )
    elements = np.frombuffer(data, _INT32_ELEMENT, length, INT32_VECTOR_HEAD)
    if len(elements) and not (elements["size"] == 4).all():
        bad = int(np.argmax(elements["size"] != 4))
        raise ApmError(
            f"{ark}: entry '{key}' at byte {offset} is corrupt: element {bad} has size byte "
            f"{int(elements['size'][bad])}, not 4 (not a Kaldi int32 vector)"
        )
    return elements["value"].astype(np.int32)


def read_alignment_scp(path: str | os.PathLike) -> Int32VectorTable:
    """`ali.scp` as a lazy {utt: int32 vector} table (`Int32VectorTable`)."""
    path = Path(path)
    if not path.is_file():
        raise ApmError(f"{path}: alignment (ali.scp) not found")
    return Int32VectorTable(path)


def read_phones(path: str | os.PathLike) -> dict[str, int]:
    """Any `symbol id` phone table (ours, Kaldi's, the oracle's) as {symbol: id}; symbols and
    ids unique."""
    path = Path(path)
    if not path.is_file():
        raise ApmError(f"{path}: phone table not found")
    table: dict[str, int] = {}
    ids: set[int] = set()
    for symbol, value in read_kv(path).items():  # duplicate symbols are read_kv's errors
        if not value.lstrip("-").isdigit():
            raise ApmError(f"{path}: expected 'symbol id', got '{symbol} {value}'")
        if int(value) in ids:
            raise ApmError(f"{path}: id {value} of '{symbol}' is used twice")
        table[symbol] = int(value)
        ids.add(int(value))
    if not table:
        raise ApmError(f"{path}: empty phone table")
    return table


def cut_language(cut, default: str | None = None) -> str:
    """The language of a cut's supervisions. Without exactly one, `default`, or an error when
    there is no default."""
    langs = {s.language for s in cut.supervisions if s.language}
    if len(langs) == 1:
        return langs.pop()
    if default is not None:
        return default
    what = "no supervision with a language" if not langs else f"languages {sorted(langs)}"
    raise ApmError(f"cut {cut.id}: {what}; check the manifests (stage 1)")


def load_cut_features(cut) -> np.ndarray:
    feats = np.asarray(cut.load_features(), dtype=np.float32)
    if feats.ndim != 2 or len(feats) == 0:
        raise ApmError(f"cut {cut.id}: features have shape {feats.shape}; recompute them")
    if not np.isfinite(feats).all():
        raise ApmError(f"cut {cut.id}: features contain NaN or inf; recompute them (stage 2)")
    return feats


def voiced_mask(cut_id: str, vad_table: Mapping, num_frames: int) -> np.ndarray:
    if cut_id not in vad_table:
        raise ApmError(f"cut {cut_id}: missing from vad.scp; rerun the feature stage (stage 2)")
    vad = np.asarray(vad_table[cut_id]).reshape(-1)
    return fit_frame_count(vad, num_frames, cut_id) > 0.5


def load_alignment(cut_id: str, ali_table: Mapping, num_frames: int, num_phones: int) -> np.ndarray:
    """Frame phone ids of a cut, fitted to its `num_frames` and checked against the table."""
    ali = np.asarray(ali_table[cut_id]).reshape(-1).astype(np.int64)
    ali = fit_frame_count(ali, num_frames, cut_id)
    if len(ali) and (ali.min() < 0 or ali.max() >= num_phones):
        raise ApmError(
            f"cut {cut_id}: phone ids {ali.min()}..{ali.max()} outside phones.txt "
            f"(0..{num_phones - 1}); the alignment and phone table do not match"
        )
    return ali


def select_and_normalize(feats: np.ndarray, keep: np.ndarray, cmn: str) -> np.ndarray:
    """The frames `keep` selects, mean-normalised as `cmn` says (see the module docstring);
    `chunk` and `none` leave the selected frames as they are."""
    if cmn == "sliding":
        feats = sliding_cmn(feats)
    feats = feats[keep]
    if cmn == "utterance" and len(feats):
        feats = feats - feats.mean(axis=0, keepdims=True)
    return feats


def chunk_cmn(chunks: np.ndarray, cmn: str, mask: np.ndarray | None = None) -> np.ndarray:
    """Chunks [..., T, F] cut from prepared frames, each with its own mean subtracted under
    `cmn: chunk` (else unchanged). With `mask` [..., T] (padded batches) the mean is over the
    valid frames and padding stays 0."""
    if cmn != "chunk":
        return chunks
    if mask is None:
        return chunks - chunks.mean(axis=-2, keepdims=True)
    valid = np.maximum(mask.sum(axis=-1), 1)[..., None, None]
    out = chunks - chunks.sum(axis=-2, keepdims=True) / valid
    out[~mask] = 0.0
    return out


def normalize_voiced(
    feats: np.ndarray, keep: np.ndarray, cmn: str, min_voiced: int
) -> tuple[np.ndarray, bool]:
    """The frames `keep` (the VAD) selects, normalised as in training, or all frames when
    fewer than `min_voiced` are voiced; (frames, whether VAD was ignored)."""
    unvoiced = int(keep.sum()) < min_voiced
    if unvoiced:
        keep = np.ones(len(feats), dtype=bool)
    return select_and_normalize(feats, keep, cmn), unvoiced


def prepare_frames(cut, vad_table: Mapping, cmn: str, min_voiced: int) -> tuple[np.ndarray, bool]:
    """VAD-kept frames of `cut`, normalised as in training; (frames, whether VAD was ignored)."""
    feats = load_cut_features(cut)
    return normalize_voiced(feats, voiced_mask(cut.id, vad_table, len(feats)), cmn, min_voiced)
