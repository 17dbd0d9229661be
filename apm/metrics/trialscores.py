"""Trials joined with their scores: the arrays every metric works on.

Language indices follow the challenge script: the target languages are the distinct languages
of the trials file, sorted. An utterance's class is the language of its target trial; an
utterance with no target trial is of the unknown class (index `n_lang`), which only the
open-set Cavg accepts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apm.data.trials import Trial, read_trials
from apm.metrics.fastparse import Fallback, has_duplicates, index_of, split_tokens
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


@dataclass
class TrialTable:
    """A trials file as arrays: trial i is (languages[lang[i]], utts[utt[i]], is_target[i])."""

    languages: list[str]  # distinct trial languages, sorted (the challenge script's order)
    utts: list[str]  # distinct utterances, in order of first appearance
    lang: np.ndarray  # int64 per trial
    utt: np.ndarray  # int64 per trial
    is_target: np.ndarray  # bool per trial

    def __len__(self) -> int:
        return len(self.lang)

    def subset(self, keep: np.ndarray) -> TrialTable:
        """The trials where `keep` is true, languages and utterances renumbered."""
        lang, utt = self.lang[keep], self.utt[keep]
        langs = np.unique(lang)
        lang_map = np.full(len(self.languages), -1, dtype=np.int64)
        lang_map[langs] = np.arange(len(langs))
        _, first = np.unique(utt, return_index=True)
        order = utt[np.sort(first)]  # old utterance indices in order of first appearance
        utt_map = np.full(len(self.utts), -1, dtype=np.int64)
        utt_map[order] = np.arange(len(order))
        return TrialTable(
            [self.languages[i] for i in langs],
            [self.utts[i] for i in order],
            lang_map[lang],
            utt_map[utt],
            self.is_target[keep],
        )


def trial_table(trials: list[Trial]) -> TrialTable:
    languages = sorted({t.lang for t in trials})
    lang_idx = {lang: i for i, lang in enumerate(languages)}
    utts = list(dict.fromkeys(t.utt for t in trials))
    utt_idx = {u: i for i, u in enumerate(utts)}
    n = len(trials)
    return TrialTable(
        languages,
        utts,
        np.fromiter((lang_idx[t.lang] for t in trials), dtype=np.int64, count=n),
        np.fromiter((utt_idx[t.utt] for t in trials), dtype=np.int64, count=n),
        np.fromiter((t.is_target for t in trials), dtype=bool, count=n),
    )


def read_trial_table(path: str | os.PathLike) -> TrialTable:
    """`read_trials(path)` as a TrialTable, vectorised for plain ASCII files; anything else,
    every error included, goes through `read_trials` (same messages, same line numbers)."""
    path = Path(path)
    if path.is_file():
        try:
            return _read_trial_table_fast(path)
        except Fallback:
            pass
    return trial_table(read_trials(path))


def _read_trial_table_fast(path: Path) -> TrialTable:
    tokens, counts = split_tokens(path)
    used = counts[counts > 0]
    if len(used) == 0 or np.any(used != 3):
        raise Fallback
    labels = tokens[2::3]
    if not set(labels) <= {b"target", b"nontarget"}:
        raise Fallback
    is_target = np.fromiter(map(len, labels), dtype=np.int64, count=len(labels)) == 6
    lang_names, lang = index_of(tokens[0::3])
    utts, utt = index_of(tokens[1::3])
    if has_duplicates(utt, lang, len(lang_names)):
        raise Fallback
    order = sorted(range(len(lang_names)), key=lang_names.__getitem__)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return TrialTable([lang_names[i] for i in order], utts, rank[lang], utt, is_target)


def _utterance_classes(table: TrialTable, path: str) -> np.ndarray:
    """Class of every utterance of `table`: the language of its target trial, else n_lang."""
    tgt_utt = table.utt[table.is_target]
    if len(tgt_utt) and np.bincount(tgt_utt).max() > 1:
        seen: set[int] = set()
        for u in tgt_utt.tolist():  # the first utterance whose target trial repeats
            if u in seen:
                raise ApmError(
                    f"{path}: utterance {table.utts[u]} has more than one target trial; "
                    "each test utterance has one language"
                )
            seen.add(u)
    cls = np.full(len(table.utts), len(table.languages), dtype=np.int64)
    cls[tgt_utt] = table.lang[table.is_target]
    return cls


def align_trials(
    trials: list[Trial] | TrialTable,
    scores: Scores,
    trials_path: str | Path,
    skip_missing: bool = False,
    warn: bool = True,
) -> TrialScores:
    """Look up the score of every trial; missing scores and unknown languages are errors.

    `trials`: as `read_trials` or `read_trial_table` gives them. With `skip_missing`, every
    trial of an utterance lacking any of its scores is dropped instead (so no utterance
    loses its target trial alone), logged (unless `warn` is false) and counted in
    `n_skipped`.
    """
    table = trials if isinstance(trials, TrialTable) else trial_table(trials)
    languages = table.languages
    score_langs = scores.lang_index()
    absent = [lang for lang in languages if lang not in score_langs]
    if absent:
        absent_idx = [languages.index(lang) for lang in absent]
        n = int(np.isin(table.lang, absent_idx).sum())
        raise ApmError(
            f"{trials_path}: trial language(s) {', '.join(absent)} ({n} trials) are not in "
            f"the scores of {scores.path} (its languages: {' '.join(scores.languages)}); "
            "score with a system trained on these languages or drop those trials"
        )
    utt_cls = _utterance_classes(table, str(trials_path))
    lang, utt, n = table.lang, table.utt, len(table)
    cls = utt_cls[utt]
    score_row = scores.utt_index()
    rows = np.fromiter(
        (score_row.get(u, -1) for u in table.utts), dtype=np.int64, count=len(table.utts)
    )[utt]
    col_of = np.array([score_langs[lang] for lang in languages], dtype=np.int64)[lang]
    score = np.full(n, np.nan)
    ok = rows >= 0  # (indexing only those: a header-only score file has no row at all)
    score[ok] = scores.matrix[rows[ok], col_of[ok]]
    missing = np.flatnonzero(np.isnan(score))
    if len(missing):
        ids = [f"({languages[lang[i]]}, {table.utts[utt[i]]})" for i in missing[:SHOW_IDS]]
        msg = (
            f"{scores.path}: no score for {len(missing)} of {n} trials of {trials_path}, "
            f"e.g. {format_ids(ids, len(missing))}"
        )
        if not skip_missing:
            raise ApmError(msg + "; score every trial utterance against every trial language")
        bad_utts = np.unique(utt[missing])
        keep = ~np.isin(utt, bad_utts)
        if not keep.any():
            raise ApmError(msg + "; no trial is left")
        if warn:
            log.warning("%s; skipping all %d trials of those %d utterances", msg,
                        n - int(keep.sum()), len(bad_utts))  # fmt: skip
        ts = align_trials(table.subset(keep), scores, trials_path)
        ts.n_skipped = n - int(keep.sum())
        return ts
    return TrialScores(languages, table.utts, lang, utt, cls, score, table.is_target)


def utterance_scores(ts: TrialScores) -> np.ndarray:
    """utts x languages matrix of the trial scores; -inf where a pair has no trial."""
    out = np.full((len(ts.utts), ts.n_lang), -np.inf)
    out[ts.utt, ts.lang] = ts.score
    return out
