"""A training set: lhotse cuts with their VAD and frame phone labels (`apm.train.cuts`),
indexed once, read by one pipeline (`apm.train.batches`) whichever way it is held.

`train.data` says where the prepared frames of a chunk come from; the batches are the same:
 - `memory`: every VAD-kept, mean-normalised frame is read once at the start and held in one
   array (eager): chunk sampling is then index arithmetic, with no per-step I/O. Training sets
   of an LID recipe (hours of speech, 40-dim frames) fit.
 - `stream`: only an index is held (ids, languages, VAD-kept frame counts, the cuts as compact
   JSON, VAD bits, where each cut's lilcom chunks and labels lie); each chunk's stored frames
   are read from the feature store and prepared when a batch needs it (`Corpus.chunk`), so
   memory stays flat in corpus size.
Augmented chunks (`augment:`) are always computed from the audio, on either path. Frames are
read and prepared by `apm.features.readers`, as extraction prepares them.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from pathlib import Path

import lilcom
import numpy as np
from lhotse.cut import Cut
from lhotse.features.io import LilcomChunkyReader
from lhotse.serialization import deserialize_item

from apm.features.readers import (
    CUTS,
    base_id,
    cut_language,
    int32_vector_size,
    is_speed_perturbed,
    load_alignment,
    load_cut_features,
    parse_int32_vector,
    read_int32_vector,
    read_phones,
    select_and_normalize,
)
from apm.train.cuts import (
    KaldiArkReader,
    is_shar_dir,
    label_field,
    load_label,
    read_shar,
    scp_entries,
)
from apm.utils.errors import ApmError
from apm.utils.frames import fit_frame_count
from apm.utils.log import progress

log = logging.getLogger(__name__)


class CutStore:
    """Cuts by index, kept small for a large set (about 0.6 kB a cut): each cut's manifest
    line as stage 2 wrote it (parsed on access) and each of its label fields as (ark, byte
    offset, length) (attached on access); besides, each cut's VAD decisions, bit-packed, and,
    for a cut that is one whole matrix of lhotse's chunky lilcom storage (what stage 2
    writes), where its lilcom chunks lie, so that a streamed chunk is read without parsing the
    cut (`Corpus.chunk`). Flat buffers, no object per cut; picklable into DataLoader workers."""

    def __init__(self) -> None:
        self._text = bytearray()  # the manifest lines, one after the other
        self._ends = array("q")  # end of line i in _text
        self._fields = array("q")  # per cut and label name: ark index, offset, length
        self._names: tuple[str, ...] | None = None
        self._arks: list[str] = []  # label arks and feature archives
        self._ark_index: dict[str, int] = {}
        self._bits = bytearray()  # packed VAD decisions, cut after cut
        self._bit_ends = array("q")
        self._matrix = array("q")  # per cut: archive index (-1: none), frames, end in _bounds
        self._bounds = array("q")  # byte offsets of each matrix's lilcom chunks, and their end

    def _file(self, path: str) -> int:
        if path not in self._ark_index:
            self._ark_index[path] = len(self._arks)
            self._arks.append(path)
        return self._ark_index[path]

    def append(
        self,
        line: str,
        fields: tuple[tuple[str, str, int, int], ...],
        voiced: np.ndarray,
        cut: Cut,
    ) -> None:
        if self._names is None:  # the same label tables for every cut of a set
            self._names = tuple(name for name, *_ in fields)
        self._text += line.encode("utf-8")
        self._ends.append(len(self._text))
        for _, ark, offset, length in fields:
            self._fields.extend((self._file(ark), offset, length))
        self._bits += np.packbits(voiced).tobytes()
        self._bit_ends.append(len(self._bits))
        chunky = _chunky_matrix(cut)
        if chunky is not None:
            self._bounds.extend(chunky[1])
        archive = -1 if chunky is None else self._file(chunky[0])
        self._matrix.extend((archive, cut.num_frames, len(self._bounds)))

    def __getitem__(self, i: int) -> Cut:
        start = self._ends[i - 1] if i else 0
        cut = deserialize_item(json.loads(bytes(self._text[start : self._ends[i]])))
        for name in self._names:
            cut = cut.with_custom(name, label_field(*self.field(i, name)))
        return cut

    def field(self, i: int, name: str) -> tuple[str, int, int]:
        """(ark, byte offset, length) of label field `name` of cut `i`."""
        k = 3 * (len(self._names) * i + self._names.index(name))
        ark, offset, length = self._fields[k : k + 3]
        return self._arks[ark], offset, length

    def matrix(self, i: int) -> tuple[str, int, array] | None:
        """(archive, frames, byte offsets of its lilcom chunks and of their end) of cut `i` when
        it is one whole matrix of chunky lilcom storage (frame t of the cut is row t), else
        None."""
        archive, frames, end = self._matrix[3 * i : 3 * i + 3]
        if archive < 0:
            return None
        start = self._matrix[3 * i - 1] if i else 0
        return self._arks[archive], frames, self._bounds[start:end]

    def voiced(self, i: int, num_frames: int) -> np.ndarray:
        """The VAD decisions (bool, one per feature frame) of cut `i`, as indexed."""
        start = self._bit_ends[i - 1] if i else 0
        bits = np.frombuffer(self._bits, np.uint8, self._bit_ends[i] - start, start)
        return np.unpackbits(bits, count=num_frames).astype(bool)

    def __len__(self) -> int:
        return len(self._ends)


def _chunky_matrix(cut: Cut) -> tuple[str, list[int]] | None:
    """(archive, byte offsets of its lilcom chunks and of their end) of a cut that is one
    whole matrix of lhotse's chunky lilcom storage, with as many chunks as its frames fill,
    else None. Its frame t is then row t of the matrix, as `cut.load_features()` reads it."""
    f = cut.features
    if (
        f is None
        or f.storage_type != LilcomChunkyReader.name
        or f.num_frames != cut.num_frames
        or abs(f.start - cut.start) >= 1e-6
    ):
        return None
    # The key is the first chunk's offset in the file, then each chunk's size.
    bounds = list(accumulate(int(x) for x in f.storage_key.split(",")))
    if len(bounds) - 1 != -(-f.num_frames // LilcomChunkyReader.CHUNK_SIZE):
        return None
    return f.storage_path, bounds


class _OpenFiles:
    """Files read by byte range, each opened once per process. `os.pread` has no file
    position to share, so DataLoader workers forked with these files open read independently;
    a pickled copy (a spawned worker) opens its own."""

    LIMIT = 64  # open files kept; past it the oldest is closed

    def __init__(self) -> None:
        self._open: dict[str, io.FileIO] = {}

    def read(self, path: str, offset: int, size: int) -> bytes:
        f = self._open.get(path)
        if f is None:
            if len(self._open) >= self.LIMIT:
                self._open.pop(next(iter(self._open))).close()
            f = self._open[path] = open(path, "rb", buffering=0)  # kept open: closed by GC or LIMIT
        return os.pread(f.fileno(), size, offset)

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._open = {}


@dataclass
class Corpus:
    """The usable utterances of a training set.

    Utterance `i` has `lengths[i]` VAD-kept frames and its cut is `cuts[i]` (None for a set
    read from Shar shards, which holds features only). Held in memory (`cached`), its prepared
    frames are rows `offsets[i]:offsets[i + 1]` of `feats` (and of `phones`, the frame phone
    ids, when alignments were loaded).
    """

    ids: list[str]
    langs: np.ndarray
    lengths: np.ndarray
    languages: list[str]
    num_phones: int
    feat_dim: int
    cmn: str
    has_phones: bool
    cuts: CutStore | None
    offsets: np.ndarray | None = None
    feats: np.ndarray | None = None
    phones: np.ndarray | None = None
    skipped: dict[str, list[str]] = field(default_factory=dict)
    files: _OpenFiles = field(default_factory=_OpenFiles, repr=False, compare=False)

    @property
    def cached(self) -> bool:
        return self.feats is not None

    def cut(self, i: int) -> Cut:
        if self.cuts is None:
            raise ApmError(
                f"utterance {self.ids[i]}: read from Shar shards, which hold features only; "
                "augmentation and train.data: stream need the feature store and audio "
                "(data/fbank/<set>)"
            )
        return self.cuts[i]

    def utterance(
        self, i: int, feats: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(prepared frames, phone ids or None) of utterance `i`: from memory, or read and
        prepared from its cut; with `feats` (e.g. augmented raw fbank), prepared from those."""
        if feats is None and self.cached:
            a, b = self.offsets[i], self.offsets[i + 1]
            return self.feats[a:b], (self.phones[a:b] if self.phones is not None else None)
        cut = self.cut(i)
        raw = load_cut_features(cut) if feats is None else feats
        if raw.shape[1] != self.feat_dim:
            raise ApmError(f"cut {cut.id}: {raw.shape[1]}-dim features, the set has "
                           f"{self.feat_dim}; recompute them (stage 2)")  # fmt: skip
        frames, phones = prepare_utterance(cut, raw, self.cmn, self.num_phones, self.has_phones)
        if len(frames) != self.lengths[i]:
            raise ApmError(
                f"cut {cut.id}: {len(frames)} voiced frames now, {self.lengths[i]} when the "
                "set was indexed; the features or VAD changed during training: rerun stage 4"
            )
        return frames, phones

    def chunk(self, i: int, start: int, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Prepared frames `start:start + n` of utterance `i` and their phone ids (or None):
        the same values as slicing `utterance(i)`. Not cached, the VAD decisions come from the
        index and only the lilcom chunks of the stored frames that the chunk spans are read
        and decoded, through files kept open, except that `cmn: utterance` reads the whole
        utterance for its mean and that `cmn: sliding` (which needs the frames around) and a
        cut stored otherwise than as one whole chunky lilcom matrix are prepared whole."""
        if self.cached:
            a = self.offsets[i] + start
            return self.feats[a : a + n], (None if self.phones is None else self.phones[a : a + n])
        stored = None if self.cmn == "sliding" else self.cuts.matrix(i)
        if stored is None:
            frames, phones = self.utterance(i)
            return frames[start : start + n], (
                None if phones is None else phones[start : start + n]
            )
        num_frames = stored[1]
        voiced_rows = np.flatnonzero(self.cuts.voiced(i, num_frames))
        rows = voiced_rows[start : start + n]
        # np.take: the rows of boolean or fancy indexing, several times faster
        if self.cmn == "utterance":  # the mean over all voiced frames needs them all
            kept = np.take(self._read_frames(i, stored, 0, num_frames), voiced_rows, axis=0)
            frames = kept[start : start + n] - kept.mean(axis=0, keepdims=True)  # as prepared
        else:
            first = int(rows[0])
            raw = self._read_frames(i, stored, first, int(rows[-1]) + 1)
            frames = np.take(raw, rows - first, axis=0)
        phones = self._alignment(i, num_frames)[rows] if self.has_phones else None
        return frames, phones

    def _read_frames(
        self, i: int, stored: tuple[str, int, array], first: int, last: int
    ) -> np.ndarray:
        """Stored feature rows `first:last` of utterance `i` (`stored`: its chunky lilcom
        matrix), decoding only the lilcom chunks they lie in, as lhotse's reader does."""
        archive, _, bounds = stored
        size = LilcomChunkyReader.CHUNK_SIZE
        a, b = first // size, -(-last // size)
        data = self.files.read(archive, bounds[a], bounds[b] - bounds[a])
        if len(data) != bounds[b] - bounds[a]:
            raise ApmError(f"cut {self.ids[i]}: {archive} ends inside its features; recompute "
                           "them (stage 2)")  # fmt: skip
        try:
            parts = [lilcom.decompress(data[x - bounds[a] : y - bounds[a]])
                     for x, y in pairwise(bounds[a : b + 1])]  # fmt: skip
        except ValueError as err:
            raise ApmError(f"cut {self.ids[i]}: its features in {archive} do not decode "
                           f"({err}); recompute them (stage 2)") from err  # fmt: skip
        whole = np.concatenate(parts) if len(parts) > 1 else parts[0]
        raw = whole[first - a * size : last - a * size]
        if raw.shape != (last - first, self.feat_dim) or not np.isfinite(raw).all():
            raise ApmError(
                f"cut {self.ids[i]}: frames {first}-{last} of its features read as {raw.shape} "
                f"(finite: {np.isfinite(raw).all()}); recompute them (stage 2)"
            )
        return raw

    def _alignment(self, i: int, num_frames: int) -> np.ndarray:
        """Frame phone ids of utterance `i` from its `ali` entry, through the open files."""
        ark, offset, length = self.cuts.field(i, "ali")
        utt = self.ids[i]
        values = parse_int32_vector(self.files.read(ark, offset, int32_vector_size(length)),
                                    ark, offset, utt)  # fmt: skip
        if values is None:  # not a binary int32 vector: kaldiio reads it
            values = read_int32_vector(ark, offset, utt)
        return load_alignment(utt, {utt: values}, num_frames, self.num_phones)


def prepare_utterance(
    cut: Cut,
    feats: np.ndarray,
    cmn: str,
    num_phones: int,
    with_phones: bool,
    values: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The VAD-kept, mean-normalised frames of one cut's raw `feats` and, `with_phones`, their
    phone ids (the cut's `vad`/`ali` fields, or their already read `values`, fitted to the
    frames): what training trains on."""

    def label(name: str) -> np.ndarray:
        if values is None:
            return load_label(cut, name, len(feats))
        return fit_frame_count(values[name], len(feats), cut.id)

    keep = label("vad") > 0.5
    phones = None
    if with_phones:
        phones = load_alignment(cut.id, {cut.id: label("ali")}, len(feats), num_phones)[keep]
    return select_and_normalize(feats, keep, cmn), phones


def report_skipped(
    fbank_dir: Path, usable: int, skipped: dict[str, list[str]], min_utt_frames: int
) -> None:
    """Log the skipped cuts by reason; no usable cut at all is an error."""
    if not usable:
        raise ApmError(
            f"{fbank_dir}: no usable training cut ({len(skipped['short'])} shorter than "
            f"{min_utt_frames} voiced frames, {len(skipped['unaligned'])} unaligned)"
        )
    for reason, which in skipped.items():
        if which:
            log.warning("skipped %d %s cuts, e.g. %s", len(which), reason, which[:3])


def _manifest(fbank_dir: Path) -> Iterator[tuple[str, Cut]]:
    """(JSON line, cut) of every cut of stage 2's manifest, read lazily."""
    path = fbank_dir / CUTS
    if not path.is_file():
        raise ApmError(f"{path}: not found; run stage 2 (features) for this set first")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                yield line, deserialize_item(json.loads(line))
            except (ValueError, KeyError, TypeError) as err:
                raise ApmError(f"{path}:{number}: not a lhotse cut ({err}); rerun stage 2") from err


class _Labels:
    """Attaches a cut's `vad` and `ali` fields from the Kaldi scp files of the set."""

    def __init__(self, fbank_dir: Path, ali_dir: Path | None, skip_unaligned: bool) -> None:
        self.vad = scp_entries(fbank_dir / "vad.scp", "VAD (vad.scp)")
        self.ali = scp_entries(ali_dir / "ali.scp", "alignment (ali.scp)") if ali_dir else None
        self.ali_dir, self.skip_unaligned = ali_dir, skip_unaligned

    def __call__(self, cut: Cut, skipped: dict) -> tuple[Cut, dict, tuple] | None:
        """(the cut with its fields, their values as read, the fields as (name, ark, offset,
        length)), or None when the cut is unaligned and skipped (counted)."""
        if self.ali is not None and cut.id not in self.ali:
            if not self.skip_unaligned:
                raise ApmError(
                    f"cut {cut.id}: no alignment in {self.ali_dir}/ali.scp; rerun stage 3 for "
                    "it or pass --skip-unaligned true to train without it"
                )
            skipped["unaligned"].append(cut.id)
            return None
        if cut.id not in self.vad:
            raise ApmError(f"cut {cut.id}: missing from vad.scp; rerun the feature stage (stage 2)")
        tables = [("vad", self.vad)] + ([("ali", self.ali)] if self.ali is not None else [])
        values, fields = {}, []
        for name, entries in tables:
            ark, offset = entries[cut.id]
            values[name] = KaldiArkReader(ark).read(str(offset))
            fields.append((name, ark, offset, len(values[name])))
            cut = cut.with_custom(name, label_field(ark, offset, len(values[name])))
        return cut, values, tuple(fields)


def _labelled(
    fbank_dir: Path, ali_dir: Path | None, skipped: dict | None
) -> Iterator[tuple[str, Cut, dict, tuple]]:
    labels = _Labels(fbank_dir, ali_dir, skipped is not None)
    counts = skipped if skipped is not None else {"unaligned": []}
    for line, cut in _manifest(fbank_dir):
        found = labels(cut, counts)
        if found is not None:
            yield (line, *found)


def labelled_cuts(
    fbank_dir: str | os.PathLike, ali_dir: str | os.PathLike | None, skipped: dict | None = None
) -> Iterator[Cut]:
    """The cuts of stage 2's `fbank_dir` with their `vad` (and, with `ali_dir`, `ali`) fields
    attached from the scp files, lazily; unaligned cuts are counted in `skipped["unaligned"]`
    and left out when `skipped` is given, else an error."""
    ali = Path(ali_dir) if ali_dir else None
    for _, cut, _, _ in _labelled(Path(fbank_dir), ali, skipped):
        yield cut


def load_corpus(
    fbank_dir: str | os.PathLike,
    ali_dir: str | os.PathLike | None,
    *,
    cmn: str,
    min_utt_frames: int,
    skip_unaligned: bool = False,
    cache: bool = True,
) -> Corpus:
    """Index a training set and, with `cache` (`train.data: memory`), load its prepared frames:
    VAD-kept, mean-normalised frames, language ids and, with `ali_dir`, frame phone labels.

    `fbank_dir` is stage 2's output (cuts, feature store, vad.scp; labels from `ali_dir`/ali.scp)
    or a directory of Shar shards (`apm.train.cuts.export_shar`, labels inside; held in memory).
    Utterances with fewer than `min_utt_frames` kept frames are skipped and counted. A cut
    without an alignment is an error, or skipped and counted with `skip_unaligned`.
    """
    fbank_dir = Path(fbank_dir)
    ali_dir = Path(ali_dir) if ali_dir is not None else None
    shar = not (fbank_dir / CUTS).is_file() and is_shar_dir(fbank_dir)
    num_phones = max(read_phones(ali_dir / "phones.txt").values()) + 1 if ali_dir else 0
    if shar:
        if not cache:
            raise ApmError(f"{fbank_dir}: Shar shards are read sequentially; train from them "
                           "with train.data: memory")  # fmt: skip
    skipped: dict[str, list[str]] = {"short": [], "unaligned": []}
    if shar:
        cuts = ((None, cut, None, ()) for cut in read_shar(fbank_dir))
    else:
        cuts = _labelled(fbank_dir, ali_dir, skipped if skip_unaligned else None)
    store = None if shar else CutStore()
    ids, langs, lengths, dims, feats, phones = [], [], [], set(), [], []
    for line, cut, values, fields in progress(
        cuts, desc=f"indexing {fbank_dir}", unit="cut", leave=False
    ):
        lang = cut_language(cut)
        if cache:
            x = load_cut_features(cut)
            frames, labels_ = prepare_utterance(
                cut, x, cmn, num_phones, ali_dir is not None, values
            )
            kept = len(frames)
        else:
            keep = fit_frame_count(values["vad"], cut.num_frames, cut.id) > 0.5
            kept = int(keep.sum())
            if ali_dir is not None:  # checked now, not in the middle of training
                ali = fit_frame_count(values["ali"], cut.num_frames, cut.id)
                load_alignment(cut.id, {cut.id: ali}, cut.num_frames, num_phones)
        if kept < min_utt_frames:
            skipped["short"].append(cut.id)
            continue
        if cache:
            feats.append(frames)
            if labels_ is not None:
                phones.append(labels_)
        if store is not None:
            store.append(line, fields, keep if not cache else np.zeros(0, dtype=bool), cut)
        ids.append(cut.id)
        langs.append(lang)
        lengths.append(kept)
        dims.add(cut.num_features)
    report_skipped(fbank_dir, len(ids), skipped, min_utt_frames)
    if len(dims) != 1:
        raise ApmError(f"{fbank_dir}: cuts have feature dimensions {sorted(dims)}; rerun stage 2")
    languages = sorted(set(langs))
    lang_index = {lang: i for i, lang in enumerate(languages)}
    corpus = Corpus(
        ids=ids,
        langs=np.array([lang_index[lang] for lang in langs], dtype=np.int64),
        lengths=np.array(lengths, dtype=np.int64),
        languages=languages,
        num_phones=num_phones,
        feat_dim=dims.pop(),
        cmn=cmn,
        has_phones=ali_dir is not None,
        cuts=store,
        skipped=skipped,
    )
    if cache:
        corpus.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        corpus.feats = np.concatenate(feats).astype(np.float32, copy=False)
        corpus.phones = np.concatenate(phones) if ali_dir is not None else None
    return corpus


def split_validation(corpus: Corpus, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and validation utterances (the same for either `train.data`).

    Per language, `fraction` of the original utterances (at least one where the language has
    two or more) go to validation; speed-perturbed copies of a held-out utterance are dropped
    from both sides, so no validation audio is ever trained on.
    """
    rng = np.random.default_rng([seed, 1])
    groups: dict[str, list[int]] = {}
    for i, utt in enumerate(corpus.ids):
        groups.setdefault(base_id(utt), []).append(i)
    names = sorted(groups)
    held: set[str] = set()
    for lang in range(len(corpus.languages)):
        mine = [g for g in names if corpus.langs[groups[g][0]] == lang]
        if fraction <= 0 or len(mine) < 2:
            continue
        count = max(1, round(fraction * len(mine)))
        held.update(mine[j] for j in rng.permutation(len(mine))[:count])
    train = [i for g in names if g not in held for i in groups[g]]
    valid = [i for g in sorted(held) for i in groups[g] if not is_speed_perturbed(corpus.ids[i])]
    return np.array(sorted(train), dtype=np.int64), np.array(valid, dtype=np.int64)
