"""Streamed training data (`train.data: stream`): features read from disk while training, in
memory bounded by the configuration, not by the corpus.

Index. `load_stream_corpus` reads `cuts.jsonl.gz` line by line (lhotse cuts, never held
together) and `vad.scp`, and keeps per usable cut only its id, language, VAD-kept frame count
and line number: the O(corpus) part (tens of bytes per cut, plus the key tables kaldiio keeps
of vad.scp/ali.scp), which the validation split, the epoch size and the language weights need.
Cuts are skipped and counted exactly as `apm.train.data.load_corpus` skips them.

Readers. Every (DDP process, DataLoader worker) pair is one reader; reader `s` of `S` owns the
cuts on lines `s, s + S, ...` of the manifest and reads only those features. A reader shuffles
its cuts within a buffer of `train.stream_buffer` cuts (metadata only), reads the features of
the cut leaving the buffer, prepares them as the memory path does (`prepare_utterance`: VAD,
CMN, alignment) and adds them to a pool of `train.stream_pool` utterances. Batch `i` of an
epoch has the chunk length the memory path's plan gives it; its chunks are drawn from the pool
(distinct utterances), starts are uniform (`chunk_starts`) and the batch is finished by the
memory path's `finish_batch` (padding, masks, chunk CMN, phone label -1).

Sampling and language balance. Each utterance gets an epoch budget of chunks: its expected
count under the memory path's sampling (`utterance_probabilities`: by frames or, with
`train.language_balanced`, each language equally often), stochastically rounded; an utterance
with budget 0 is not read this epoch. Within the pool, utterances are drawn in proportion to
their remaining budget, and leave the pool when it is spent. So the languages of an epoch's
chunks follow the same shares as in the memory path, with rare-language utterances repeated
and frequent ones sub-sampled, while each reader only ever holds its pool. A reader whose cuts
run out before its batches starts another pass over them (with new budgets).

Determinism. Everything a reader draws comes from (seed, epoch, process rank, worker index):
an epoch is reproducible, and a resumed run replays it, for the same number of processes and
`train.num_workers` (unlike the memory path, these change the batches).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lhotse.serialization import deserialize_item

from apm.features.readers import (
    CUTS,
    cut_language,
    load_cut_features,
    read_alignment_scp,
    read_scp,
    voiced_mask,
)
from apm.train.batches import (
    batches_per_epoch,
    chunk_starts,
    finish_batch,
    spec_augment_masks,
    utterance_probabilities,
)
from apm.train.data import is_aligned, open_alignments, prepare_utterance, report_skipped
from apm.utils.errors import ApmError
from apm.utils.log import progress

log = logging.getLogger(__name__)

# The features of a cut: raw fbank [frames, bins] (before VAD and CMN). The default reads the
# stored features; an augmenting callable returns features of the same shape, drawn with `rng`
# (the reader's generator, so augmentation is as reproducible as the rest of the epoch).
FeatureFn = Callable[[object, np.random.Generator], np.ndarray]


def stored_features(cut: object, rng: np.random.Generator) -> np.ndarray:
    """The cut's features as stage 2 stored them (`rng` unused)."""
    return load_cut_features(cut)


@dataclass
class StreamCorpus:
    """The index of a streamed training set; cut `i` is on line `lines[i]` of `cuts.jsonl.gz`."""

    fbank_dir: Path
    ali_dir: Path | None
    ids: list[str]
    langs: np.ndarray
    lengths: np.ndarray  # VAD-kept frames per cut
    lines: np.ndarray
    num_lines: int
    languages: list[str]
    num_phones: int
    feat_dim: int
    skipped: dict[str, list[str]] = field(default_factory=dict)
    features: FeatureFn = stored_features


def cut_lines(fbank_dir: Path) -> Iterator[tuple[int, str]]:
    """(line number, JSON) of every cut in the manifest, read lazily."""
    path = Path(fbank_dir) / CUTS
    if not path.is_file():
        raise ApmError(f"{path}: not found; run stage 2 (features) for this set first")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        yield from enumerate(f)


def _parse(fbank_dir: Path, number: int, line: str):
    try:
        return deserialize_item(json.loads(line))
    except (ValueError, KeyError, TypeError) as err:
        raise ApmError(
            f"{fbank_dir / CUTS}:{number + 1}: not a lhotse cut ({err}); rerun stage 2"
        ) from err


def read_lines(corpus: StreamCorpus, rows: np.ndarray) -> Iterator[tuple[int, object]]:
    """(index row, cut) of the cuts `rows`, in manifest order; other lines are not parsed."""
    row_of_line = np.full(corpus.num_lines, -1, dtype=np.int64)
    row_of_line[corpus.lines[rows]] = rows
    for number, line in cut_lines(corpus.fbank_dir):
        if number < corpus.num_lines and row_of_line[number] >= 0:
            yield int(row_of_line[number]), _parse(corpus.fbank_dir, number, line)


def load_stream_corpus(
    fbank_dir: str | os.PathLike,
    ali_dir: str | os.PathLike | None,
    *,
    min_utt_frames: int,
    skip_unaligned: bool = False,
    features: FeatureFn = stored_features,
) -> StreamCorpus:
    """Index a training set for streaming (see the module docstring); no features are read."""
    fbank_dir = Path(fbank_dir)
    vad_table = read_scp(fbank_dir / "vad.scp", "VAD (vad.scp)")
    ali_table, num_phones = open_alignments(ali_dir)
    ids, langs, lengths, lines, dims = [], [], [], [], set()
    skipped: dict[str, list[str]] = {"short": [], "unaligned": []}
    number = -1
    for number, line in progress(cut_lines(fbank_dir), desc=f"indexing {fbank_dir}", unit="cut"):
        cut = _parse(fbank_dir, number, line)
        if not is_aligned(cut.id, ali_table, ali_dir, skip_unaligned, skipped):
            continue
        lang = cut_language(cut)
        kept = int(voiced_mask(cut.id, vad_table, cut.num_frames).sum())
        if kept < min_utt_frames:
            skipped["short"].append(cut.id)
            continue
        ids.append(cut.id)
        langs.append(lang)
        lengths.append(kept)
        lines.append(number)
        dims.add(cut.num_features)
    report_skipped(fbank_dir, len(ids), skipped, min_utt_frames)
    if len(dims) != 1:
        raise ApmError(f"{fbank_dir / CUTS}: cuts have feature dimensions {sorted(dims)}")
    languages = sorted(set(langs))
    lang_index = {lang: i for i, lang in enumerate(languages)}
    return StreamCorpus(
        fbank_dir=fbank_dir,
        ali_dir=Path(ali_dir) if ali_dir is not None else None,
        ids=ids,
        langs=np.array([lang_index[lang] for lang in langs], dtype=np.int64),
        lengths=np.array(lengths, dtype=np.int64),
        lines=np.array(lines, dtype=np.int64),
        num_lines=number + 1,
        languages=languages,
        num_phones=num_phones,
        feat_dim=dims.pop(),
        skipped=skipped,
        features=features,
    )


class _Preparer:
    """Reads and prepares one cut's frames and labels, as the memory path does."""

    def __init__(self, corpus: StreamCorpus, cmn: str) -> None:
        self.corpus, self.cmn = corpus, cmn
        self.vad = read_scp(corpus.fbank_dir / "vad.scp", "VAD (vad.scp)")
        self.ali: Mapping | None = None
        if corpus.ali_dir is not None:
            self.ali = read_alignment_scp(corpus.ali_dir / "ali.scp")

    def __call__(
        self, cut, features: FeatureFn, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.asarray(features(cut, rng), dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.corpus.feat_dim or not np.isfinite(x).all():
            raise ApmError(
                f"cut {cut.id}: features of shape {x.shape} (finite: {np.isfinite(x).all()}); "
                f"expected finite [frames, {self.corpus.feat_dim}]; recompute them (stage 2)"
            )
        keep = voiced_mask(cut.id, self.vad, len(x))
        if not keep.any():
            raise ApmError(
                f"cut {cut.id}: no voiced frame in its features, but vad.scp and the manifest "
                "gave enough when indexing; the features and VAD disagree: rerun stage 2"
            )
        return prepare_utterance(cut.id, x, keep, self.ali, self.corpus.num_phones, self.cmn)


@dataclass
class _Utterance:
    row: int
    frames: np.ndarray
    phones: np.ndarray | None
    budget: float


class StreamBatches(torch.utils.data.IterableDataset):
    """Batches `0..num_batches-1` of epoch `epoch` for process `rank` of `world`, streamed from
    the cuts `pool` of `corpus`; DataLoader worker `w` of `K` yields batches `w, w + K, ...`
    (the DataLoader's round robin then gives them in order)."""

    def __init__(
        self,
        corpus: StreamCorpus,
        pool: np.ndarray,
        train_cfg: dict,
        seed: int,
        epoch: int,
        rank: int = 0,
        world: int = 1,
        num_batches: int | None = None,
    ) -> None:
        super().__init__()
        self.corpus, self.pool, self.cfg = corpus, pool, train_cfg
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world
        full = batches_per_epoch(corpus, pool, train_cfg)
        self.num_batches = full if num_batches is None else min(num_batches, full)
        self.rows = train_cfg["batch_size"] // world
        # The memory path's plan draws the chunk lengths first from this generator: the same
        # chunk length for batch i in both paths, on every process.
        rng = np.random.default_rng([seed, 2, epoch])
        lo, hi = train_cfg["chunk_min_frames"], train_cfg["chunk_max_frames"]
        self.lengths = rng.integers(lo, hi + 1, size=full)[: self.num_batches]
        probs = utterance_probabilities(
            corpus.lengths[pool], corpus.langs[pool], train_cfg["language_balanced"]
        )
        self.expected = probs * full * train_cfg["batch_size"]  # chunks per utterance

    def __len__(self) -> int:
        return self.num_batches

    @staticmethod
    def worker() -> tuple[int, int]:
        """(DataLoader worker index, number of workers); (0, 1) in the training process."""
        info = torch.utils.data.get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def reader(self) -> tuple[int, int]:
        """(this reader's index, number of readers): one per process and worker."""
        worker, workers = self.worker()
        return self.rank * workers + worker, self.world * workers

    def shard(self) -> np.ndarray:
        """Positions in `pool` of the cuts this reader owns."""
        reader, readers = self.reader()
        mine = np.flatnonzero(self.corpus.lines[self.pool] % readers == reader)
        if not len(mine):
            raise ApmError(
                f"{self.corpus.fbank_dir}: {len(self.pool)} training cuts for {readers} readers "
                f"({self.world} processes x train.num_workers): reader {reader} gets none; "
                "lower train.num_workers"
            )
        return mine

    def __iter__(self) -> Iterator[dict]:
        worker, workers = self.worker()
        rng = np.random.default_rng([self.seed, 4, self.epoch, self.rank, worker])
        utterances = self._utterances(self.shard(), rng)
        pool: list[_Utterance] = []
        target = max(self.cfg["stream_pool"], self.rows)
        for i in range(worker, self.num_batches, workers):
            while len(pool) < target:
                pool.append(next(utterances))
            yield self._batch(i, pool, rng)
            pool = [u for u in pool if u.budget > 0]

    def _utterances(self, shard: np.ndarray, rng: np.random.Generator) -> Iterator[_Utterance]:
        """Prepared utterances of the shard, budgeted and buffer-shuffled, pass after pass."""
        prepare = _Preparer(self.corpus, self.cfg["cmn"])
        size = self.cfg["stream_buffer"]
        while True:
            expected = self.expected[shard]
            budgets = np.floor(expected + rng.random(len(shard)))
            if not budgets.any():
                budgets[:] = 1.0
            by_row = dict(zip(self.pool[shard].tolist(), budgets.tolist(), strict=True))
            wanted = self.pool[shard][budgets > 0]
            buffer: list[tuple[int, object]] = []
            for row, cut in read_lines(self.corpus, np.sort(wanted)):
                buffer.append((row, cut))
                if len(buffer) >= size:
                    yield self._take(buffer, by_row, prepare, rng)
            while buffer:
                yield self._take(buffer, by_row, prepare, rng)

    def _take(self, buffer: list, by_row: dict, prepare: _Preparer, rng) -> _Utterance:
        j = int(rng.integers(len(buffer)))
        buffer[j], buffer[-1] = buffer[-1], buffer[j]
        row, cut = buffer.pop()
        frames, phones = prepare(cut, self.corpus.features, rng)
        return _Utterance(row, frames, phones, by_row[row])

    def _batch(self, i: int, pool: list[_Utterance], rng: np.random.Generator) -> dict:
        length = int(self.lengths[i])
        budget = np.array([u.budget for u in pool])
        chosen = rng.choice(
            len(pool), size=self.rows, replace=len(pool) < self.rows, p=budget / budget.sum()
        )
        utts = [pool[j] for j in chosen]
        sizes = np.array([len(u.frames) for u in utts])
        starts = chunk_starts(sizes, length, rng.random(self.rows))
        valid = np.minimum(sizes - starts, length)
        feats = np.zeros((self.rows, length, self.corpus.feat_dim), dtype=np.float32)
        phones = (
            np.zeros((self.rows, length), dtype=np.int64) if pool[0].phones is not None else None
        )
        for k, (u, s, n) in enumerate(zip(utts, starts, valid, strict=True)):
            feats[k, :n] = u.frames[s : s + n]
            if phones is not None:
                phones[k, :n] = u.phones[s : s + n]
            u.budget -= 1
        mask = np.arange(length)[None, :] < valid[:, None]
        langs = self.corpus.langs[[u.row for u in utts]]
        batch = finish_batch(feats, mask, langs, phones, self.cfg["cmn"])
        spec = self.cfg["specaugment"]
        if spec is not None:
            srng = np.random.default_rng([self.seed, 3, self.epoch, i, self.rank])
            freq, time = spec_augment_masks(
                self.rows, length, self.corpus.feat_dim, valid, spec, srng
            )
            batch["feats"].masked_fill_(torch.from_numpy(freq[:, None, :] | time[:, :, None]), 0.0)
        batch["utts"] = [self.corpus.ids[u.row] for u in utts]
        return batch


def stream_validation_batches(
    corpus: StreamCorpus, pool: np.ndarray, train_cfg: dict
) -> Iterator[dict[str, torch.Tensor]]:
    """The central `chunk_max_frames` (or all) frames of each utterance in `pool`, read in
    manifest order; within a buffer of 4 batches, batched by length so that padding stays
    small (one buffer holding all gives the memory path's `validation_batches`). Stored
    features, never augmented ones."""
    longest, size, cmn = train_cfg["chunk_max_frames"], train_cfg["batch_size"], train_cfg["cmn"]
    prepare = _Preparer(corpus, cmn)
    rng = np.random.default_rng(0)  # unused by stored_features
    buffer: list[tuple[int, np.ndarray, np.ndarray | None]] = []

    def flush(final: bool) -> Iterator[dict]:
        order = sorted(range(len(buffer)), key=lambda k: len(buffer[k][1]))
        while len(order) >= size or (final and order):
            rows, order = order[:size], order[size:]
            yield _central_batch([buffer[k] for k in rows], corpus, cmn)
        keep = [buffer[k] for k in sorted(order)]
        buffer[:] = keep

    for row, cut in read_lines(corpus, np.sort(pool)):
        frames, phones = prepare(cut, stored_features, rng)
        n = min(len(frames), longest)
        start = (len(frames) - n) // 2
        chunk_phones = phones[start : start + n].copy() if phones is not None else None
        buffer.append((row, frames[start : start + n].copy(), chunk_phones))
        if len(buffer) >= 4 * size:
            yield from flush(final=False)
    yield from flush(final=True)


def _central_batch(items: list, corpus: StreamCorpus, cmn: str) -> dict:
    length = max(len(frames) for _, frames, _ in items)
    feats = np.zeros((len(items), length, corpus.feat_dim), dtype=np.float32)
    phones = None if items[0][2] is None else np.zeros((len(items), length), dtype=np.int64)
    mask = np.zeros((len(items), length), dtype=bool)
    for k, (_, frames, labels) in enumerate(items):
        feats[k, : len(frames)], mask[k, : len(frames)] = frames, True
        if phones is not None:
            phones[k, : len(frames)] = labels
    langs = corpus.langs[[row for row, _, _ in items]]
    batch = finish_batch(feats, mask, langs, phones, cmn)
    batch["utts"] = [corpus.ids[row] for row, _, _ in items]
    return batch
