"""Cavg, the OLR challenges' average detection cost (AP17-OLR plan, arXiv 1706.09742).

For target language L at threshold t (a trial is accepted when score >= t):

    C_L(t) = P_target * P_miss(L, t) + P_nontarget * sum_{N != L} P_fa(L, N, t)
    Cavg(t) = mean_L C_L(t)

P_miss(L, t) is the fraction of L's target trials scored below t; P_fa(L, N, t) the fraction of
the trials (L, utterance of class N) scored at or above t. P_target = 0.5 and
P_nontarget = (1 - P_target) / (n_lang - 1). In the open-set variant the utterances with no
target trial form one more non-target class N = unknown and P_nontarget = (1 - P_target) /
n_lang.

`challenge_cavg` reproduces the challenge script (`computeCavg.py` / `computeCavg_unknown.py`
by Z. Tang, Tsinghua, as shipped with the AP-OLR baselines and ASV-Subtools) bit for bit:
- target languages: the distinct languages of the trials, sorted; the mean runs over all of
  them, and the normaliser of P_nontarget is n_lang - 1 (n_lang open-set) whatever the data;
- thresholds: min + k * ((max - min) / 20), k = 0..20, over the scores of the trials only
  (`np.linspace` differs in the last bit at the top end, so it is not used);
- a language without target trials contributes P_miss = 0, an (L, N) pair without trials
  P_fa = 0;
- the sums run in the script's order, so the float result is identical, and the minimum is
  rounded with Python's `round(x, 4)`.
One deliberate difference: the closed-set script counts utterances without a target trial as
false alarms of the last language (an accident of `LNa[-1]`); here that is an error asking for
the open-set variant.

`min_cavg` is the exact minimum of Cavg(t) over every threshold (all distinct trial scores and
+inf), computed from per-trial weights with one sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apm.metrics.trialscores import TrialScores, format_ids
from apm.utils import ApmError

P_TARGET = 0.5
N_THRESHOLDS = 21  # the challenge script's 20 bins
DECIMALS = 4


@dataclass
class CavgResult:
    cavg: float  # min over thresholds, rounded to DECIMALS
    threshold: float  # the (first) threshold reaching the minimum
    curve: np.ndarray  # unrounded Cavg at each threshold
    thresholds: np.ndarray
    lang_costs: np.ndarray  # C_L at `threshold`, one per target language


def _check(ts: TrialScores, open_set: bool) -> None:
    if ts.n_lang < 2 and not open_set:
        raise ApmError(
            f"closed-set Cavg needs at least 2 target languages, the trials have {ts.languages}"
        )
    unknown = np.flatnonzero(ts.utt_cls == ts.n_lang)
    if len(unknown) and not open_set:
        ids = [ts.utts[i] for i in unknown[:5]]
        raise ApmError(
            f"{len(unknown)} trial utterances have no target trial (unknown language), e.g. "
            f"{format_ids(ids, len(unknown))}; closed-set Cavg cannot score them: use the "
            "open-set variant (--open-set) or remove them from the trials"
        )


def p_nontarget(n_lang: int, open_set: bool, p_target: float = P_TARGET) -> float:
    return (1 - p_target) / (n_lang if open_set else n_lang - 1)


def challenge_thresholds(scores: np.ndarray, n: int = N_THRESHOLDS) -> np.ndarray:
    """The challenge script's thresholds, with its exact float arithmetic."""
    lo, hi = float(scores.min()), float(scores.max())
    return lo + np.arange(n, dtype=np.float64) * ((hi - lo) / (n - 1))


def _rates(ts: TrialScores, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P_miss (T x L) and P_fa (T x L x classes) at each threshold, from one histogram."""
    n_cls = ts.n_lang + 1
    n_bins = len(thresholds) + 1
    # bin k = number of thresholds <= score: the trial is accepted at thresholds 0..k-1
    k = np.searchsorted(thresholds, ts.score, side="right")
    group = ts.lang * n_cls + ts.cls
    hist = np.bincount(group * n_bins + k, minlength=ts.n_lang * n_cls * n_bins)
    hist = hist.reshape(ts.n_lang, n_cls, n_bins)
    at_or_above = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]
    total = at_or_above[..., 0].astype(np.float64)
    accepted = at_or_above[..., 1:].astype(np.float64)  # L x C x T
    denom = np.where(total > 0, total, 1.0)[..., None]
    frac = np.where(total[..., None] > 0, accepted / denom, 0.0)
    target = np.eye(ts.n_lang, n_cls, dtype=bool)
    missed = np.where(total[..., None] > 0, (total[..., None] - accepted) / denom, 0.0)
    p_miss = missed[target].T  # T x L
    p_fa = np.where(target[..., None], 0.0, frac).transpose(2, 0, 1)  # T x L x C
    return p_miss, p_fa


def _costs(ts: TrialScores, thresholds: np.ndarray, open_set: bool, p_target: float) -> np.ndarray:
    """C_L at each threshold (T x L), summing in the challenge script's order."""
    p_miss, p_fa = _rates(ts, thresholds)
    fa_sum = np.zeros(p_miss.shape)
    for c in range(p_fa.shape[2]):
        fa_sum += p_fa[:, :, c]
    return p_target * p_miss + p_nontarget(ts.n_lang, open_set, p_target) * fa_sum


def cavg_curve(
    ts: TrialScores, thresholds: np.ndarray, open_set: bool = False, p_target: float = P_TARGET
) -> tuple[np.ndarray, np.ndarray]:
    """(Cavg at each threshold, C_L at each threshold T x L), unrounded."""
    _check(ts, open_set)
    costs = _costs(ts, thresholds, open_set, p_target)
    total = np.zeros(len(thresholds))
    for lang in range(ts.n_lang):
        total += costs[:, lang]
    return total / ts.n_lang, costs


def challenge_cavg(ts: TrialScores, open_set: bool = False) -> CavgResult:
    """Cavg exactly as the OLR challenge script reports it (21 thresholds, 4 decimals)."""
    thresholds = challenge_thresholds(ts.score)
    curve, costs = cavg_curve(ts, thresholds, open_set)
    best = int(np.argmin(curve))
    return CavgResult(
        cavg=round(float(curve[best]), DECIMALS),
        threshold=float(thresholds[best]),
        curve=curve,
        thresholds=thresholds,
        lang_costs=costs[best],
    )


def min_cavg(ts: TrialScores, open_set: bool = False, p_target: float = P_TARGET) -> CavgResult:
    """Exact minimum of Cavg over all thresholds (every distinct score, and +inf).

    Cavg(t) is a sum of per-trial weights: p_target / (n_lang * #targets of L) for each target
    trial of L below t, p_nontarget / (n_lang * #trials of (L, N)) for each non-target trial of
    (L, N) at or above t; one sort and two cumulative sums give it at every threshold.
    """
    _check(ts, open_set)
    n_cls = ts.n_lang + 1
    group = ts.lang * n_cls + ts.cls
    size = np.bincount(group, minlength=ts.n_lang * n_cls)[group]
    p_non = p_nontarget(ts.n_lang, open_set, p_target)
    weight = np.where(ts.is_target, p_target, p_non) / (ts.n_lang * size)
    values, inverse = np.unique(ts.score, return_inverse=True)
    miss_w = np.bincount(
        inverse, weights=np.where(ts.is_target, weight, 0.0), minlength=len(values)
    )
    fa_w = np.bincount(inverse, weights=np.where(ts.is_target, 0.0, weight), minlength=len(values))
    # threshold values[j] misses the targets below it and accepts the non-targets from it on
    miss = np.concatenate([[0.0], np.cumsum(miss_w)])
    fa = np.concatenate([np.cumsum(fa_w[::-1])[::-1], [0.0]])
    curve = miss + fa
    thresholds = np.concatenate([values, [np.inf]])
    best = int(np.argmin(curve))
    _, costs = cavg_curve(ts, thresholds[best : best + 1], open_set, p_target)
    return CavgResult(
        cavg=round(float(curve[best]), DECIMALS),
        threshold=float(thresholds[best]),
        curve=curve,
        thresholds=thresholds,
        lang_costs=costs[0],
    )
