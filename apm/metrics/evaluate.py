"""All metrics of one scored task, as a JSON-ready summary (see `evaluate_task`)."""

from __future__ import annotations

import numpy as np

from apm.metrics.cavg import challenge_cavg, min_cavg
from apm.metrics.eer import eer
from apm.metrics.trialscores import TrialScores, utterance_scores

UNKNOWN = "unknown"


def identification(ts: TrialScores) -> tuple[np.ndarray, np.ndarray]:
    """(true class per utterance, predicted language = argmax of its scores)."""
    return ts.utt_cls, np.argmax(utterance_scores(ts), axis=1)


def confusion_matrix(ts: TrialScores) -> tuple[list[str], list[str], np.ndarray]:
    """(row labels = true classes, column labels = predicted languages, counts)."""
    true, pred = identification(ts)
    rows = list(ts.languages) + ([UNKNOWN] if np.any(true == ts.n_lang) else [])
    counts = np.zeros((ts.n_lang + 1, ts.n_lang), dtype=np.int64)
    np.add.at(counts, (true, pred), 1)
    return rows, list(ts.languages), counts[: len(rows)]


def _percent(num: float, den: float) -> float | None:
    return round(100.0 * num / den, 2) if den else None


def _language_eer(ts: TrialScores, lang: int) -> float | None:
    mine = ts.lang == lang
    tgt, non = ts.score[mine & ts.is_target], ts.score[mine & ~ts.is_target]
    return round(eer(tgt, non), 2) if len(tgt) and len(non) else None


def evaluate_task(ts: TrialScores, open_set: bool) -> dict:
    """Metrics of one task.

    Keys: `open_set`; counts `n_trials`, `n_trials_skipped` (no scores, --skip-bad), `n_utts`,
    `n_unknown_utts`; `cavg` (challenge
    definition: 21 thresholds, 4 decimals) and `cavg_threshold`; `min_cavg` (exact minimum over
    all thresholds, 4 decimals) and `min_cavg_threshold` (null: reject everything); `eer` (percent, pooled trials);
    `accuracy` (percent of known-language utterances whose best-scored language is theirs);
    `per_language`: {lang: {n_utts, accuracy, eer, cost}} where `cost` is C_L at the Cavg
    threshold (Cavg is their mean); `confusion`: {rows, columns, counts} (rows: true
    language, plus `unknown` in open-set tasks; columns: predicted language).
    """
    challenge = challenge_cavg(ts, open_set)
    exact = min_cavg(ts, open_set)
    true, pred = identification(ts)
    known = true < ts.n_lang
    rows, cols, counts = confusion_matrix(ts)
    per_language = {}
    for i, lang in enumerate(ts.languages):
        mine = true == i
        per_language[lang] = {
            "n_utts": int(mine.sum()),
            "accuracy": _percent(np.sum(pred[mine] == i), mine.sum()),
            "eer": _language_eer(ts, i),
            "cost": round(float(challenge.lang_costs[i]), 4),
        }
    return {
        "open_set": open_set,
        "n_trials": len(ts.score),
        "n_trials_skipped": ts.n_skipped,
        "n_utts": len(ts.utts),
        "n_unknown_utts": ts.n_unknown_utts,
        "cavg": challenge.cavg,
        "cavg_threshold": challenge.threshold,
        "min_cavg": exact.cavg,
        "min_cavg_threshold": exact.threshold if np.isfinite(exact.threshold) else None,
        "eer": round(eer(ts.score[ts.is_target], ts.score[~ts.is_target]), 4),
        "accuracy": _percent(np.sum(pred[known] == true[known]), known.sum()),
        "per_language": per_language,
        "confusion": {"rows": rows, "columns": cols, "counts": counts.tolist()},
    }
