"""Paired bootstrap intervals for differences of Cavg and EER between two systems.

A comparison "system A minus system B" on one test task is paired twice: both systems score
the same utterances (one trials file), and seed k of A and seed k of B share everything but
the thing compared. One bootstrap replicate draws the test utterances with replacement (a
multinomial count per utterance, used as a weight on all its trials) and the seeds with
replacement, applies the same draw to both systems, and takes the difference of their
seed-averaged metrics. The 2.5 and 97.5 percentiles of the replicates give the 95% interval;
its half-width is about the smallest difference the run could resolve.

The weighted metrics equal the plain ones at weight 1 (`challenge_cavg` before rounding,
`eer`): Cavg keeps the challenge's 21 thresholds between the lowest and highest score of the
drawn trials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from apm.metrics.cavg import N_THRESHOLDS, P_TARGET, p_nontarget
from apm.metrics.trialscores import TrialScores
from apm.utils import ApmError

METRICS = ("cavg", "eer")
CHUNK = 128  # replicates computed at once (bounds memory: CHUNK x trials floats)


def weighted_cavg(
    ts: TrialScores, utt_weights: np.ndarray, open_set: bool, p_target: float = P_TARGET
) -> np.ndarray:
    """Challenge Cavg (unrounded) for each row of `utt_weights` [R, utterances]."""
    if ts.n_lang < 2 and not open_set:
        raise ApmError(f"closed-set Cavg needs at least 2 target languages, got {ts.languages}")
    n_cls = ts.n_lang + 1
    n_groups = ts.n_lang * n_cls
    group = ts.lang * n_cls + ts.cls
    order = np.lexsort((ts.score, group))
    group_sorted, score_sorted = group[order], ts.score[order]
    starts = np.searchsorted(group_sorted, np.arange(n_groups), side="left")
    ends = np.searchsorted(group_sorted, np.arange(n_groups), side="right")
    out = []
    for chunk in np.array_split(utt_weights, max(1, -(-len(utt_weights) // CHUNK))):
        w = chunk[:, ts.utt].astype(np.float64)  # R x T
        present = w > 0
        lo = np.where(present, ts.score, np.inf).min(axis=1)
        hi = np.where(present, ts.score, -np.inf).max(axis=1)
        thresholds = (
            lo[:, None] + np.arange(N_THRESHOLDS) * ((hi - lo) / (N_THRESHOLDS - 1))[:, None]
        )
        cum = np.zeros((len(w), len(order) + 1))
        np.cumsum(w[:, order], axis=1, out=cum[:, 1:])
        # first trial of each group scored >= threshold: the accepted ones run from there
        pos = np.stack([
            starts[g] + np.searchsorted(score_sorted[starts[g] : ends[g]], thresholds, "left")
            for g in range(n_groups)
        ], axis=1)  # fmt: skip  # R x G x K
        rows = np.arange(len(w))[:, None, None]
        accepted = cum[:, ends][:, :, None] - cum[rows, pos]  # R x G x K
        total = (cum[:, ends] - cum[:, starts])[:, :, None]  # R x G x 1
        frac = np.divide(accepted, total, out=np.zeros_like(accepted), where=total > 0)
        frac = frac.reshape(len(w), ts.n_lang, n_cls, N_THRESHOLDS)
        target = np.eye(ts.n_lang, n_cls, dtype=bool)
        has = total.reshape(len(w), ts.n_lang, n_cls, 1) > 0
        p_miss = np.where(has, 1.0 - frac, 0.0)[:, target]  # R x L x K
        p_fa = np.where(target[None, :, :, None], 0.0, frac).sum(axis=2)  # R x L x K
        costs = p_target * p_miss + p_nontarget(ts.n_lang, open_set, p_target) * p_fa
        out.append(costs.mean(axis=1).min(axis=1))
    return np.concatenate(out)


def weighted_eer(ts: TrialScores, utt_weights: np.ndarray) -> np.ndarray:
    """Pooled-trial EER (percent) for each row of `utt_weights` [R, utterances]."""
    order = np.argsort(ts.score, kind="stable")
    score_sorted = ts.score[order]
    target_sorted = ts.is_target[order]
    # operating points: threshold = each distinct score (first trial with it), then +inf
    firsts = np.concatenate([np.searchsorted(score_sorted, np.unique(score_sorted), "left"),
                             [len(order)]])  # fmt: skip
    out = []
    for chunk in np.array_split(utt_weights, max(1, -(-len(utt_weights) // CHUNK))):
        w = chunk[:, ts.utt][:, order].astype(np.float64)
        cum_t = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w * target_sorted, axis=1)], 1)
        cum_n = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w * ~target_sorted, axis=1)], 1)
        tot_t, tot_n = cum_t[:, -1:], cum_n[:, -1:]
        if np.any(tot_t == 0) or np.any(tot_n == 0):
            raise ApmError("EER needs target and non-target trials in every bootstrap draw")
        p_miss = cum_t[:, firsts] / tot_t
        p_fa = 1.0 - cum_n[:, firsts] / tot_n
        k = np.argmax(p_miss >= p_fa, axis=1)
        rows = np.arange(len(w))
        d0 = p_fa[rows, k - 1] - p_miss[rows, k - 1]
        d1 = p_fa[rows, k] - p_miss[rows, k]
        a = d0 / (d0 - d1)
        out.append(100.0 * (p_miss[rows, k - 1] + a * (p_miss[rows, k] - p_miss[rows, k - 1])))
    return np.concatenate(out)


def system_metric(
    per_seed: Sequence[TrialScores], metric: str, weights: np.ndarray, open_set: bool
) -> np.ndarray:
    """seeds x rows of `weights`: the metric of each seed's scores under each weighting."""
    if metric not in METRICS:
        raise ApmError(f"unknown metric '{metric}'; available: {', '.join(METRICS)}")
    if metric == "cavg":
        return np.stack([weighted_cavg(ts, weights, open_set) for ts in per_seed])
    return np.stack([weighted_eer(ts, weights) for ts in per_seed])


@dataclass(frozen=True)
class Interval:
    """A - B: the estimate on all utterances and seeds, and the 95% bootstrap interval."""

    estimate: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def verdict(self, expected_sign: int) -> str:
        """'supported' when the interval lies wholly on the expected side of 0 (-1: A lower),
        'contradicted' when wholly on the other side, otherwise 'not resolved'."""
        if self.high < 0 or self.low > 0:
            return "supported" if (self.high < 0) == (expected_sign < 0) else "contradicted"
        return "not resolved"


class PairedBootstrap:
    """The draws of one task, shared by every system compared on it (the pairing).

    `metrics(per_seed, metric, open_set)` is the metric of one system per replicate (seeds
    resampled and averaged), plus its value on all data; `interval(a, b)` of two such results
    is the paired difference.
    """

    def __init__(self, n_utts: int, n_seeds: int, n_boot: int = 1000, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.utt_counts = rng.multinomial(n_utts, np.full(n_utts, 1.0 / n_utts), size=n_boot)
        self.seed_draws = rng.integers(n_seeds, size=(n_boot, n_seeds))
        self.n_utts, self.n_seeds = n_utts, n_seeds
        self.utts: list[str] | None = None  # the first system's utterances, in trial order

    def metrics(
        self, per_seed: Sequence[TrialScores], metric: str, open_set: bool
    ) -> tuple[float, np.ndarray]:
        """(seed-mean metric on all utterances, seed-resampled mean per replicate)."""
        if len(per_seed) != self.n_seeds:
            raise ApmError(f"expected {self.n_seeds} seeds of scores, got {len(per_seed)}")
        self.utts = self.utts or list(per_seed[0].utts)
        if len(self.utts) != self.n_utts or any(ts.utts != self.utts for ts in per_seed):
            raise ApmError(
                "a paired bootstrap needs every system and seed to score the same utterances "
                "(one trials file, same order)"
            )
        full = system_metric(per_seed, metric, np.ones((1, self.n_utts)), open_set)[:, 0]
        boot = system_metric(per_seed, metric, self.utt_counts, open_set)  # S x B
        replicates = boot[self.seed_draws.T, np.arange(boot.shape[1])].mean(axis=0)
        return float(full.mean()), replicates

    @staticmethod
    def interval(
        a: tuple[float, np.ndarray], b: tuple[float, np.ndarray], level: float = 0.95
    ) -> Interval:
        diff = a[1] - b[1]
        tail = 100 * (1 - level) / 2
        low, high = np.percentile(diff, [tail, 100 - tail])
        return Interval(a[0] - b[0], float(low), float(high))
