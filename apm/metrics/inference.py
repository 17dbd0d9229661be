"""Inference on paired differences over seeds and a clustered test set: intervals, p-values,
Holm's step-down over a pre-registered family, power, and the A/A check of it all.

A contrast is a linear combination of systems evaluated on one task, paired seed by seed
(seed k of every system shares everything but the thing compared) and draw by draw
(`apm.metrics.bootstrap.HierarchicalDraws`). Its estimate is the mean over the S seeds of the
per-seed contrast on all test utterances. Two variance components add up:

  seed level   var_seed / S, var_seed the sample variance of the S per-seed contrasts;
  test level   var_test, the variance over hierarchical test-set draws of the seed-mean
               contrast, split into a speaker part (speaker-only draws) and the rest
               (utterances within speakers).

SE^2 = var_seed / S + var_test; the interval is estimate +- t * SE with Welch-Satterthwaite
degrees of freedom (S - 1 for the seed level, clusters - strata for the test level). A
percentile interval over joint draws (seeds resampled too) is kept for comparison: with few
seeds it is too narrow (the A/A check measures by how much), which is why it is not used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from apm.metrics.bootstrap import SeedMetrics
from apm.utils import ApmError

LEVEL = 0.95
POWER = 0.8


@dataclass(frozen=True)
class Contrast:
    """A paired contrast on one task: estimate, variance components, interval, p-value."""

    estimate: float
    n_seeds: int
    var_seed: float  # variance of one seed's contrast (between seeds)
    var_test: float  # variance of the seed-mean contrast over test-set draws
    var_speaker: float  # its speaker part
    test_df: int
    percentile: tuple[float, float]  # joint (seeds and test set) percentile interval

    @classmethod
    def of(cls, diff: SeedMetrics, seed_draws: np.ndarray | None = None,
           level: float = LEVEL) -> Contrast:  # fmt: skip
        """From per-seed contrasts; `seed_draws` [B, S] (indices) for the percentile
        interval, drawn here with a fixed seed when not given."""
        s = len(diff.full)
        if s < 2:
            raise ApmError(f"a contrast over seeds needs at least 2 seeds, got {s}")
        if seed_draws is None:
            seed_draws = np.random.default_rng(0).integers(s, size=(diff.boot.shape[1], s))
        joint = diff.boot[seed_draws.T, np.arange(diff.boot.shape[1])].mean(axis=0)
        tail = 100 * (1 - level) / 2
        low, high = np.percentile(joint, [tail, 100 - tail])
        var_test = float(np.var(diff.boot.mean(axis=0), ddof=1))
        var_speaker = min(var_test, float(np.var(diff.speaker_boot.mean(axis=0), ddof=1)))
        return cls(float(diff.full.mean()), s, float(np.var(diff.full, ddof=1)), var_test,
                   var_speaker, max(1, diff.test_df), (float(low), float(high)))  # fmt: skip

    @property
    def var_utterance(self) -> float:
        return self.var_test - self.var_speaker

    def se(self, n_seeds: int | None = None) -> float:
        """Standard error of the estimate, or of the same contrast with `n_seeds` seeds."""
        return math.sqrt(self.var_seed / (n_seeds or self.n_seeds) + self.var_test)

    def df(self, n_seeds: int | None = None) -> float:
        """Welch-Satterthwaite degrees of freedom of se(n_seeds)."""
        s = n_seeds or self.n_seeds
        a, b = self.var_seed / s, self.var_test
        den = a * a / (self.n_seeds - 1) + b * b / self.test_df
        return (a + b) ** 2 / den if den > 0 else float("inf")

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        half = stats.t.ppf(0.5 + level / 2, self.df()) * self.se()
        return self.estimate - half, self.estimate + half

    @property
    def half_width(self) -> float:
        low, high = self.interval()
        return (high - low) / 2

    @property
    def p_value(self) -> float:
        """Two-sided, H0: no difference."""
        se = self.se()
        if se == 0:
            return 1.0 if self.estimate == 0 else 0.0
        return float(2 * stats.t.sf(abs(self.estimate) / se, self.df()))

    def mdd(self, alpha: float = 1 - LEVEL, power: float = POWER,
            n_seeds: int | None = None) -> float:  # fmt: skip
        """Minimum detectable difference: the true contrast a two-sided level-alpha test
        finds with probability `power`, for this test set and `n_seeds` seeds."""
        df = self.df(n_seeds)
        return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * self.se(n_seeds))

    def seeds_for(self, mdd: float, alpha: float = 1 - LEVEL, power: float = POWER,
                  limit: int = 10_000) -> int | None:  # fmt: skip
        """The fewest seeds whose MDD is at most `mdd` on this test set; None when the test
        level alone keeps it above (more seeds cannot help: more test speakers would)."""
        if self.mdd(alpha, power, limit) > mdd:
            return None
        lo, hi = 2, limit
        while lo < hi:
            mid = (lo + hi) // 2
            if self.mdd(alpha, power, mid) <= mdd:
                hi = mid
            else:
                lo = mid + 1
        return lo


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down; reject where adjusted p <= alpha)."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


@dataclass(frozen=True)
class Coverage:
    """How often A/A intervals (identical configurations, disjoint seeds) contain 0."""

    n: int
    t_interval: float  # fraction covered by Contrast.interval
    percentile: float  # fraction covered by the joint percentile interval
    seeds_per_arm: int


def aa_coverage(systems: Sequence[SeedMetrics], splits: int, rng: np.random.Generator,
                level: float = LEVEL) -> Coverage:  # fmt: skip
    """A/A comparisons: each system's seeds split at random into two disjoint halves, paired
    k-th with k-th, compared as if two systems; the true difference is 0."""
    s = min(len(m.full) for m in systems)
    h = s // 2
    if h < 2:
        raise ApmError(f"an A/A check needs at least 4 seeds per system, got {s}")
    hits_t = hits_p = n = 0
    for metrics in systems:
        for _ in range(splits):
            perm = rng.permutation(len(metrics.full))
            diff = metrics.seeds(perm[:h]) - metrics.seeds(perm[h : 2 * h])
            draws = rng.integers(h, size=(diff.boot.shape[1], h))
            c = Contrast.of(diff, draws, level)
            low, high = c.interval(level)
            hits_t += low <= 0 <= high
            hits_p += c.percentile[0] <= 0 <= c.percentile[1]
            n += 1
    return Coverage(n, float(hits_t / n), float(hits_p / n), h)
