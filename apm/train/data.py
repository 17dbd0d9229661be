"""Reading a feature set (lhotse cuts + `vad.scp`) and its alignments into memory.

Training sets of an LID recipe are small enough (hours of speech, 40-dim frames) to keep every
VAD-kept frame in one array: chunk sampling is then index arithmetic, with no per-step I/O.
Frame preparation (`select_and_normalize`) is shared with extraction so both see the same input:
 - VAD: only frames with `vad > 0.5` are kept (Kaldi `select-voiced-frames`);
 - CMN (`cmn: utterance`): the mean over the kept frames of the whole utterance is subtracted;
   `cmn: sliding` is Kaldi's x-vector recipe order (`apply-cmvn-sliding --cmn-window=300` over
   all frames, then `select-voiced-frames`); with `cmn: chunk` the mean of each
   training/extraction chunk is subtracted instead.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import kaldiio
import numpy as np
from lhotse import CutSet

from apm.features.cmn import sliding_cmn
from apm.utils.errors import ApmError
from apm.utils.frames import fit_frame_count
from apm.utils.log import progress

log = logging.getLogger(__name__)

SPEED_PERTURBED = re.compile(r"_sp\d+(?:\.\d+)?$")


def is_speed_perturbed(cut_id: str) -> bool:
    return SPEED_PERTURBED.search(cut_id) is not None


def base_id(cut_id: str) -> str:
    """The original utterance of a speed-perturbed copy (`utt_sp0.9` -> `utt`)."""
    return SPEED_PERTURBED.sub("", cut_id)


def read_cuts(fbank_dir: str | os.PathLike) -> CutSet:
    path = Path(fbank_dir) / "cuts.jsonl.gz"
    if not path.is_file():
        raise ApmError(f"{path}: not found; run the feature stage (stage 2) for this set first")
    return CutSet.from_file(path)


def read_scp(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ApmError(f"{path}: {what} not found")
    return kaldiio.load_scp(str(path))


def read_phones(path: str | os.PathLike) -> dict[str, int]:
    """`phones.txt` (`symbol id` per line) as {symbol: id}."""
    path = Path(path)
    if not path.is_file():
        raise ApmError(f"{path}: phone table not found")
    table: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise ApmError(f"{path}:{lineno}: expected '<symbol> <id>', got '{line}'")
        table[fields[0]] = int(fields[1])
    if not table:
        raise ApmError(f"{path}: empty phone table")
    return table


def cut_language(cut) -> str:
    if not cut.supervisions or not cut.supervisions[0].language:
        raise ApmError(f"cut {cut.id}: no supervision with a language; check the manifests")
    return cut.supervisions[0].language


def load_cut_features(cut) -> np.ndarray:
    feats = np.asarray(cut.load_features(), dtype=np.float32)
    if feats.ndim != 2 or len(feats) == 0:
        raise ApmError(f"cut {cut.id}: features have shape {feats.shape}; recompute them")
    if not np.isfinite(feats).all():
        raise ApmError(f"cut {cut.id}: features contain NaN or inf; recompute them (stage 2)")
    return feats


def voiced_mask(cut_id: str, vad_table: dict, num_frames: int) -> np.ndarray:
    if cut_id not in vad_table:
        raise ApmError(f"cut {cut_id}: missing from vad.scp; rerun the feature stage (stage 2)")
    vad = np.asarray(vad_table[cut_id]).reshape(-1)
    return fit_frame_count(vad, num_frames, cut_id) > 0.5


def select_and_normalize(feats: np.ndarray, keep: np.ndarray, cmn: str) -> np.ndarray:
    """The frames `keep` selects, mean-normalised as `cmn` says (see the module docstring);
    `chunk` and `none` leave the selected frames as they are."""
    if cmn == "sliding":
        feats = sliding_cmn(feats)
    feats = feats[keep]
    if cmn == "utterance" and len(feats):
        feats = feats - feats.mean(axis=0, keepdims=True)
    return feats


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


def _load_alignment(cut_id: str, ali_table: dict, num_frames: int, num_phones: int) -> np.ndarray:
    ali = np.asarray(ali_table[cut_id]).reshape(-1).astype(np.int64)
    ali = fit_frame_count(ali, num_frames, cut_id)
    if len(ali) and (ali.min() < 0 or ali.max() >= num_phones):
        raise ApmError(
            f"cut {cut_id}: phone ids {ali.min()}..{ali.max()} outside phones.txt "
            f"(0..{num_phones - 1}); the alignment and phone table do not match"
        )
    return ali


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
    ali_table, num_phones = None, 0
    if ali_dir is not None:
        ali_table = read_scp(Path(ali_dir) / "ali.scp", "alignment (ali.scp)")
        num_phones = max(read_phones(Path(ali_dir) / "phones.txt").values()) + 1
    ids, langs, feats, phones = [], [], [], []
    skipped: dict[str, list[str]] = {"short": [], "unaligned": []}
    for cut in progress(cuts, desc=f"loading {fbank_dir}", unit="cut", leave=False):
        if ali_table is not None and cut.id not in ali_table:
            if not skip_unaligned:
                raise ApmError(
                    f"cut {cut.id}: no alignment in {ali_dir}/ali.scp; rerun stage 3 for it "
                    "or pass --skip-unaligned true to train without it"
                )
            skipped["unaligned"].append(cut.id)
            continue
        lang = cut_language(cut)
        x = load_cut_features(cut)
        keep = voiced_mask(cut.id, vad_table, len(x))
        if keep.sum() < min_utt_frames:
            skipped["short"].append(cut.id)
            continue
        if ali_table is not None:
            phones.append(_load_alignment(cut.id, ali_table, len(x), num_phones)[keep])
        ids.append(cut.id)
        langs.append(lang)
        feats.append(select_and_normalize(x, keep, cmn))
    if not ids:
        raise ApmError(
            f"{fbank_dir}: no usable training cut ({len(skipped['short'])} shorter than "
            f"{min_utt_frames} voiced frames, {len(skipped['unaligned'])} unaligned)"
        )
    for reason, which in skipped.items():
        if which:
            log.warning("skipped %d %s cuts, e.g. %s", len(which), reason, which[:3])
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


def split_validation(corpus: Corpus, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and validation utterances.

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
