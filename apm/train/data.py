"""A training set (lhotse cuts + `vad.scp`) and its alignments, held in memory
(`train.data: memory`; `apm.train.stream` streams it instead).

Training sets of an LID recipe are small enough (hours of speech, 40-dim frames) to keep every
VAD-kept frame in one array: chunk sampling is then index arithmetic, with no per-step I/O.
Frames are read and prepared by `apm.features.readers`, as extraction prepares them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from apm.features.readers import (
    base_id,
    cut_language,
    is_speed_perturbed,
    load_alignment,
    load_cut_features,
    read_alignment_scp,
    read_cuts,
    read_phones,
    read_scp,
    select_and_normalize,
    voiced_mask,
)
from apm.utils.errors import ApmError
from apm.utils.log import progress

if TYPE_CHECKING:
    from apm.train.stream import StreamCorpus

log = logging.getLogger(__name__)


@dataclass
class Corpus:
    """VAD-kept frames of a set of utterances, concatenated.

    Utterance `i` owns rows `offsets[i]:offsets[i + 1]` of `feats` (and of `phones`, the frame
    phone ids, when alignments were loaded).
    """

    ids: list[str]
    langs: np.ndarray
    offsets: np.ndarray
    feats: np.ndarray
    phones: np.ndarray | None
    languages: list[str]
    num_phones: int
    skipped: dict[str, list[str]] = field(default_factory=dict)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def feat_dim(self) -> int:
        return int(self.feats.shape[1])


def open_alignments(ali_dir: str | os.PathLike | None) -> tuple[Mapping | None, int]:
    """(lazy ali.scp table, phone inventory size) of `ali_dir`; (None, 0) without one."""
    if ali_dir is None:
        return None, 0
    table = read_alignment_scp(Path(ali_dir) / "ali.scp")
    return table, max(read_phones(Path(ali_dir) / "phones.txt").values()) + 1


def is_aligned(
    cut_id: str, ali_table: Mapping | None, ali_dir, skip_unaligned: bool, skipped: dict
) -> bool:
    """Whether the cut has its alignment (always, without alignments). A cut without one is an
    error, or skipped and counted in `skipped["unaligned"]` with `skip_unaligned`."""
    if ali_table is None or cut_id in ali_table:
        return True
    if not skip_unaligned:
        raise ApmError(
            f"cut {cut_id}: no alignment in {ali_dir}/ali.scp; rerun stage 3 for it "
            "or pass --skip-unaligned true to train without it"
        )
    skipped["unaligned"].append(cut_id)
    return False


def load_corpus(
    fbank_dir: str | os.PathLike,
    ali_dir: str | os.PathLike | None,
    *,
    cmn: str,
    min_utt_frames: int,
    skip_unaligned: bool = False,
) -> Corpus:
    """Load a training set: VAD-kept, mean-normalised frames, language ids and, with `ali_dir`,
    frame phone labels.

    Utterances with fewer than `min_utt_frames` kept frames are skipped and counted. A cut
    without an alignment is an error, or skipped and counted with `skip_unaligned`.
    """
    fbank_dir = Path(fbank_dir)
    cuts = read_cuts(fbank_dir)
    vad_table = read_scp(fbank_dir / "vad.scp", "VAD (vad.scp)")
    ali_table, num_phones = open_alignments(ali_dir)
    ids, langs, feats, phones = [], [], [], []
    skipped: dict[str, list[str]] = {"short": [], "unaligned": []}
    for cut in progress(cuts, desc=f"loading {fbank_dir}", unit="cut", leave=False):
        if not is_aligned(cut.id, ali_table, ali_dir, skip_unaligned, skipped):
            continue
        lang = cut_language(cut)
        x = load_cut_features(cut)
        keep = voiced_mask(cut.id, vad_table, len(x))
        if keep.sum() < min_utt_frames:
            skipped["short"].append(cut.id)
            continue
        frames, labels = prepare_utterance(cut.id, x, keep, ali_table, num_phones, cmn)
        if labels is not None:
            phones.append(labels)
        ids.append(cut.id)
        langs.append(lang)
        feats.append(frames)
    report_skipped(fbank_dir, len(ids), skipped, min_utt_frames)
    languages = sorted(set(langs))
    lang_index = {lang: i for i, lang in enumerate(languages)}
    return Corpus(
        ids=ids,
        langs=np.array([lang_index[lang] for lang in langs], dtype=np.int64),
        offsets=np.concatenate([[0], np.cumsum([len(f) for f in feats])]).astype(np.int64),
        feats=np.concatenate(feats).astype(np.float32, copy=False),
        phones=np.concatenate(phones) if ali_table is not None else None,
        languages=languages,
        num_phones=num_phones,
        skipped=skipped,
    )


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


def prepare_utterance(
    cut_id: str,
    feats: np.ndarray,
    keep: np.ndarray,
    ali_table: Mapping | None,
    num_phones: int,
    cmn: str,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The VAD-kept (`keep`), mean-normalised frames of one utterance's raw `feats` and, with
    an alignment table, their phone ids: what both training data paths train on."""
    phones = None
    if ali_table is not None:
        phones = load_alignment(cut_id, ali_table, len(feats), num_phones)[keep]
    return select_and_normalize(feats, keep, cmn), phones


def split_validation(
    corpus: Corpus | StreamCorpus, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and validation utterances (the same for both data paths).

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
