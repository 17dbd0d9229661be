"""Chunk sampling: the plan of an epoch and the batches built from it, for every data path.

An epoch is planned in full from `(seed, epoch)` alone: the chunk length of every batch, and
the utterance and start frame of every chunk. `ChunkBatches` (a map-style dataset: batch i of
the plan) is the one training dataset, whether the frames are held in memory or read from the
feature store (`apm.train.data`): the same plan gives the same batches on either path. Batches
are pure functions of (plan, seed, epoch, batch index), so training is reproducible whatever
the number of DataLoader workers, and a run resumed at step k of an epoch builds exactly
batches k, k+1, ... (`DataLoader(batch_size=None, sampler=range(k, N))`). With N processes
(DDP), process r takes chunks r, r+N, ... of every batch (`batch_size` is the global batch):
every process gets every batch, with equal row counts.

Augmentation is drawn per chunk from (seed, epoch, batch, row of the global batch): MUSAN
noise/music/babble or RIR reverberation (`apm.features.augment.Augmenter`, the chunk's
utterance recomputed from its audio) and SpecAugment masks, the same for any worker or
process count.

An epoch draws as many chunks as the training frames hold (total frames / mean chunk length).
Utterances are drawn in proportion to their number of frames, or, with `language_balanced`,
each language equally often and, within it, in proportion to frames. A chunk starts uniformly
within its utterance; an utterance shorter than the batch's chunk length is taken whole and
padded with masked frames (phone label -1).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from apm.features.augment import Augmenter
from apm.features.readers import chunk_cmn
from apm.train.data import Corpus


@dataclass
class EpochPlan:
    lengths: np.ndarray  # [num_batches] chunk length of each batch
    utts: np.ndarray  # [num_batches, batch_size] corpus utterance index of each chunk
    starts: np.ndarray  # [num_batches, batch_size] first frame of each chunk

    def __len__(self) -> int:
        return len(self.lengths)


def utterance_probabilities(frames: np.ndarray, langs: np.ndarray, balanced: bool) -> np.ndarray:
    """Probability of drawing each utterance: in proportion to its `frames`, or, `balanced`,
    each language (`langs`) equally likely and, within it, in proportion to frames."""
    frames = frames.astype(np.float64)
    if not balanced:
        return frames / frames.sum()
    per_lang = np.bincount(langs, weights=frames)
    return frames / per_lang[langs] / np.count_nonzero(per_lang)


def chunk_starts(utt_frames: np.ndarray, length: np.ndarray | int, u: np.ndarray) -> np.ndarray:
    """First frame of chunks of `length` frames, uniform within each utterance (`u` uniform
    draws in [0, 1)); 0 for an utterance shorter than its chunk (taken whole, padded)."""
    room = np.maximum(utt_frames - length + 1, 1)
    return np.floor(u * room).astype(np.int64)


def batches_per_epoch(corpus: Corpus, pool: np.ndarray, train_cfg: dict) -> int:
    """Enough batches for the chunks to hold as many frames as the utterances of `pool`."""
    mean_chunk = (train_cfg["chunk_min_frames"] + train_cfg["chunk_max_frames"]) / 2
    total = int(corpus.lengths[pool].sum())
    return max(1, round(total / mean_chunk / train_cfg["batch_size"]))


def plan_epoch(
    corpus: Corpus, pool: np.ndarray, train_cfg: dict, seed: int, epoch: int
) -> EpochPlan:
    """Plan epoch `epoch` (0-based) over the utterances `pool` of `corpus`."""
    rng = np.random.default_rng([seed, 2, epoch])
    num_batches = batches_per_epoch(corpus, pool, train_cfg)
    batch = train_cfg["batch_size"]
    lengths = rng.integers(
        train_cfg["chunk_min_frames"], train_cfg["chunk_max_frames"] + 1, size=num_batches
    )
    probs = utterance_probabilities(
        corpus.lengths[pool], corpus.langs[pool], train_cfg["language_balanced"]
    )
    utts = pool[rng.choice(len(pool), size=(num_batches, batch), p=probs)]
    u = rng.random((num_batches, batch))
    starts = chunk_starts(corpus.lengths[utts], lengths[:, None], u)
    return EpochPlan(lengths=lengths, utts=utts, starts=starts)


def gather(
    corpus: Corpus,
    utts: np.ndarray,
    starts: np.ndarray,
    length: int,
    cmn: str,
    raw: dict[int, np.ndarray] | None = None,
) -> dict[str, torch.Tensor]:
    """Chunks `[starts, starts + length)` of `utts`, padded (masked) where an utterance ends:
    index arithmetic on a corpus held in memory, else each chunk read and prepared
    (`Corpus.chunk`). `raw` gives other raw features (augmented) for some rows."""
    valid = np.minimum(corpus.lengths[utts] - starts, length)
    frame = np.arange(length)
    mask = frame[None, :] < valid[:, None]
    if corpus.cached and not raw:
        rows = np.where(mask, corpus.offsets[utts][:, None] + starts[:, None] + frame[None, :], 0)
        phones = corpus.phones[rows] if corpus.phones is not None else None
        return finish_batch(corpus.feats[rows], mask, corpus.langs[utts], phones, cmn)
    feats = np.zeros((len(utts), length, corpus.feat_dim), dtype=np.float32)
    phones = np.zeros((len(utts), length), dtype=np.int64) if corpus.has_phones else None
    for k, (u, s, n) in enumerate(zip(utts.tolist(), starts.tolist(), valid.tolist(), strict=True)):
        if raw and k in raw:
            frames, labels = corpus.utterance(u, raw[k])
            frames, labels = frames[s : s + n], (None if labels is None else labels[s : s + n])
        else:
            frames, labels = corpus.chunk(u, s, n)
        feats[k, :n] = frames
        if phones is not None:
            phones[k, :n] = labels
    return finish_batch(feats, mask, corpus.langs[utts], phones, cmn)


def finish_batch(
    feats: np.ndarray, mask: np.ndarray, langs: np.ndarray, phones: np.ndarray | None, cmn: str
) -> dict:
    """A training batch from chunks [B, T, F] cut from prepared frames and their mask [B, T]:
    padding zeroed, chunk CMN, phone label -1 on padding; `padded` (a host-side bool) tells
    the model whether it needs the mask at all."""
    feats[~mask] = 0.0
    feats = chunk_cmn(feats, cmn, mask)
    batch = {
        "feats": torch.from_numpy(feats),
        "mask": torch.from_numpy(mask),
        "langs": torch.from_numpy(langs),
        "padded": not bool(mask.all()),
    }
    if phones is not None:
        batch["phones"] = torch.from_numpy(np.where(mask, phones, -1))
    return batch


def spec_augment_masks(
    num: int, length: int, dim: int, valid: np.ndarray, spec: dict, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """SpecAugment masks of `num` chunks: [num, dim] bins and [num, length] frames to zero."""

    def spans(count: int, width: int, extent: np.ndarray, size: int) -> np.ndarray:
        w = rng.integers(0, width + 1, size=(num, count))
        s = np.floor(rng.random((num, count)) * np.maximum(extent[:, None] - w + 1, 1))
        pos = np.arange(size)[None, :, None]
        return ((pos >= s[:, None, :]) & (pos < (s + w)[:, None, :])).any(axis=2)

    freq = spans(spec["freq_masks"], spec["freq_width"], np.full(num, dim), dim)
    time = spans(spec["time_masks"], spec["time_width"], valid, length)
    return freq, time


class ChunkBatches(torch.utils.data.Dataset):
    """Batch `i` of one epoch plan, as seen by process `rank` of `world`; with `augmenter`,
    chunks are augmented as drawn per (seed, epoch, batch, row)."""

    def __init__(
        self,
        corpus: Corpus,
        plan: EpochPlan,
        train_cfg: dict,
        seed: int,
        epoch: int,
        rank: int = 0,
        world: int = 1,
        augmenter: Augmenter | None = None,
    ) -> None:
        self.corpus, self.plan, self.cfg = corpus, plan, train_cfg
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world
        self.augmenter = augmenter if augmenter is not None and augmenter.cfg.enabled else None

    def __len__(self) -> int:
        return len(self.plan)

    def augmented(self, i: int, utts: np.ndarray, rows: np.ndarray) -> dict[int, np.ndarray]:
        """{position in `utts`: augmented raw fbank} of the chunks of batch `i` drawn for
        augmentation; `rows` are their rows in the global batch (the draw's key)."""
        out: dict[int, np.ndarray] = {}
        if self.augmenter is None:
            return out
        for k, (u, row) in enumerate(zip(utts.tolist(), rows.tolist(), strict=True)):
            rng = np.random.default_rng([self.seed, 5, self.epoch, i, row])
            cut = self.corpus.cut(u)
            plan = self.augmenter.draw_plan(cut, rng)
            if plan is not None:
                out[k] = self.augmenter.fbank(cut, self.augmenter.audio(cut, plan))
        return out

    def __getitem__(self, i: int) -> dict:
        length = int(self.plan.lengths[i])
        spec = self.cfg["specaugment"]
        mine = slice(self.rank, None, self.world)
        utts, starts = self.plan.utts[i], self.plan.starts[i]
        rows = np.arange(len(utts))[mine]
        raw = self.augmented(i, utts[mine], rows)
        batch = gather(self.corpus, utts[mine], starts[mine], length, self.cfg["cmn"], raw)
        if spec is not None:
            # Drawn for the global batch, then sliced: the same masks for any process count.
            rng = np.random.default_rng([self.seed, 3, self.epoch, i])
            valid = np.minimum(self.corpus.lengths[utts] - starts, length)
            dim = self.corpus.feat_dim
            freq, time = spec_augment_masks(len(utts), length, dim, valid, spec, rng)
            # Zeroed in place as frames [b, T] and bins [b, F]: the zeros of a masked_fill_
            # with the [b, T, F] mask of either, without building it (~10x faster).
            feats = batch["feats"].numpy()
            feats[time[mine]] = 0.0
            feats.transpose(0, 2, 1)[freq[mine]] = 0.0
        batch["utts"] = [self.corpus.ids[u] for u in utts[mine]]
        return batch


def validation_batches(
    corpus: Corpus, pool: np.ndarray, train_cfg: dict
) -> Iterator[dict[str, torch.Tensor]]:
    """The central `chunk_max_frames` (or all) frames of each utterance in `pool`, batched by
    length so that padding stays small."""
    longest = train_cfg["chunk_max_frames"]
    lengths = np.minimum(corpus.lengths[pool], longest)
    order = np.argsort(lengths, kind="stable")
    for first in range(0, len(order), train_cfg["batch_size"]):
        rows = order[first : first + train_cfg["batch_size"]]
        utts = pool[rows]
        starts = (corpus.lengths[utts] - lengths[rows]) // 2
        batch = gather(corpus, utts, starts, int(lengths[rows].max()), train_cfg["cmn"])
        batch["utts"] = [corpus.ids[u] for u in utts]
        yield batch
