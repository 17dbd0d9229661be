"""Trials joined with their scores: the arrays every metric works on.

Language indices follow the challenge script: the target languages are the distinct languages
of the trials file, sorted. An utterance's class is the language of its target trial; an
utterance with no target trial is of the unknown class (index `n_lang`), which only the
open-set Cavg accepts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apm.data.trials import Trial
from apm.metrics.scorefile import Scores
from apm.utils import ApmError

log = logging.getLogger(__name__)

SHOW_IDS = 5  # how many offending ids an error message lists


@dataclass
class TrialScores:
    languages: list[str]  # target languages, sorted
    utts: list[str]  # utterances of the trials, in order of first appearance
    lang: np.ndarray  # int64 per trial: index into `languages`
    utt: np.ndarray  # int64 per trial: index into `utts`
    cls: np.ndarray  # int64 per trial: class of the trial's utterance; n_lang = unknown
    score: np.ndarray  # float64 per trial
    is_target: np.ndarray  # bool per trial
    n_skipped: int = 0  # trials left out for lack of scores (skip_missing)

    @property
    def n_lang(self) -> int:
        return len(self.languages)

    @property
    def utt_cls(self) -> np.ndarray:
        """Class of every utterance in `utts` (n_lang for unknown)."""
        out = np.full(len(self.utts), self.n_lang, dtype=np.int64)
        out[self.utt] = self.cls
        return out

    @property
    def n_unknown_utts(self) -> int:
        return int(np.sum(self.utt_cls == self.n_lang))


def format_ids(ids: list[str], total: int) -> str:
    """The first SHOW_IDS of `ids` and how many more there are out of `total`."""
    more = f" ... (+{total - SHOW_IDS} more)" if total > SHOW_IDS else ""
    return ", ".join(ids[:SHOW_IDS]) + more


def _utterance_classes(trials: list[Trial], lang_idx: dict[str, int], path: str) -> dict[str, int]:
    cls: dict[str, int] = {}
    for t in trials:
        if t.is_target:
            if t.utt in cls:
                raise ApmError(
                    f"{path}: utterance {t.utt} has more than one target trial; "
                    "each test utterance has one language"
                )
            cls[t.utt] = lang_idx[t.lang]
    return cls


def align_trials(
    trials: list[Trial],
    scores: Scores,
    trials_path: str | Path,
    skip_missing: bool = False,
    warn: bool = True,
) -> TrialScores:
    """Look up the score of every trial; missing scores and unknown languages are errors.

    With `skip_missing`, every trial of an utterance lacking any of its scores is dropped
    instead (so no utterance loses its target trial alone), logged (unless `warn` is false)
    and counted in `n_skipped`.
    """
    languages = sorted({t.lang for t in trials})
    lang_idx = {lang: i for i, lang in enumerate(languages)}
    absent = [lang for lang in languages if lang not in scores.lang_index()]
    if absent:
        n = sum(1 for t in trials if t.lang in set(absent))
        raise ApmError(
            f"{trials_path}: trial language(s) {', '.join(absent)} ({n} trials) are not in "
            f"the scores of {scores.path} (its languages: {' '.join(scores.languages)}); "
            "score with a system trained on these languages or drop those trials"
        )
    utt_cls = _utterance_classes(trials, lang_idx, str(trials_path))
    utts = list(dict.fromkeys(t.utt for t in trials))
    utt_idx = {u: i for i, u in enumerate(utts)}
    n = len(trials)
    lang = np.fromiter((lang_idx[t.lang] for t in trials), dtype=np.int64, count=n)
    utt = np.fromiter((utt_idx[t.utt] for t in trials), dtype=np.int64, count=n)
    cls = np.fromiter((utt_cls.get(t.utt, len(languages)) for t in trials), np.int64, count=n)
    is_target = np.fromiter((t.is_target for t in trials), dtype=bool, count=n)
    score_row = scores.utt_index()
    rows = np.array([score_row.get(u, -1) for u in utts], dtype=np.int64)[utt]
    col_of = np.array([scores.lang_index()[lang] for lang in languages], dtype=np.int64)[lang]
    score = np.where(rows >= 0, scores.matrix[rows, col_of], np.nan)
    missing = np.flatnonzero(np.isnan(score))
    if len(missing):
        ids = [f"({trials[i].lang}, {trials[i].utt})" for i in missing[:SHOW_IDS]]
        msg = (
            f"{scores.path}: no score for {len(missing)} of {n} trials of {trials_path}, "
            f"e.g. {format_ids(ids, len(missing))}"
        )
        if not skip_missing:
            raise ApmError(msg + "; score every trial utterance against every trial language")
        bad_utts = {trials[i].utt for i in missing}
        kept = [t for t in trials if t.utt not in bad_utts]
        if not kept:
            raise ApmError(msg + "; no trial is left")
        if warn:
            log.warning("%s; skipping all %d trials of those %d utterances", msg,
                        n - len(kept), len(bad_utts))  # fmt: skip
        ts = align_trials(kept, scores, trials_path)
        ts.n_skipped = n - len(kept)
        return ts
    return TrialScores(languages, utts, lang, utt, cls, score, is_target)


def utterance_scores(ts: TrialScores) -> np.ndarray:
    """utts x languages matrix of the trial scores; -inf where a pair has no trial."""
    out = np.full((len(ts.utts), ts.n_lang), -np.inf)
    out[ts.utt, ts.lang] = ts.score
    return out
