"""Test-set resampling for differences of Cavg and EER between systems.

mini-OLR and OLR test sets are clustered: each language has a handful of speakers, and a
speaker's utterances are alike (speaker explains about half the variance of a system's
per-utterance behaviour on mini-OLR). Resampling utterances as if independent gives intervals
that are too narrow. `HierarchicalDraws` resamples hierarchically, as the test set was made:

  within each stratum (an utterance's language; open-set unknowns are one more stratum), draw
  its speakers with replacement, then each drawn speaker's utterances with replacement.

A draw is a weight per utterance (how often it was drawn), used on all its trials; every
system compared on a task uses the same draws (the pairing), and every replicate recomputes
the metric, Cavg with the challenge's 21 thresholds between the lowest and highest score of
the drawn trials. The weighted metrics equal the plain ones at weight 1 (`challenge_cavg`
before rounding, `eer`). Seeds are a second level, handled in `apm.metrics.inference`.
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
class Clusters:
    """Utterance i is spoken by cluster `speaker[i]` within stratum `stratum[i]`: the units a
    hierarchical draw resamples. A speaker found in two strata is two clusters."""

    stratum: np.ndarray  # int64 per utterance
    speaker: np.ndarray  # int64 per utterance

    @classmethod
    def of(cls, utts: Sequence[str], strata: Sequence[object], utt2spk: dict[str, str]) -> Clusters:
        """Clusters from per-utterance strata (e.g. TrialScores.utt_cls) and a utt2spk map;
        every utterance must have a speaker."""
        missing = [u for u in utts if u not in utt2spk]
        if missing:
            raise ApmError(f"{len(missing)} test utterance(s) without a speaker in utt2spk "
                           f"(e.g. {', '.join(missing[:3])}); a hierarchical bootstrap "
                           "needs every utterance's speaker")  # fmt: skip
        _, stratum = np.unique(np.asarray([str(s) for s in strata]), return_inverse=True)
        keys = [f"{s}\t{utt2spk[u]}" for u, s in zip(utts, stratum, strict=True)]
        _, speaker = np.unique(np.asarray(keys), return_inverse=True)
        return cls(stratum.astype(np.int64), speaker.astype(np.int64))

    @classmethod
    def flat(cls, n_utts: int) -> Clusters:
        """Every utterance its own speaker, one stratum: the utterance-level bootstrap."""
        return cls(np.zeros(n_utts, dtype=np.int64), np.arange(n_utts, dtype=np.int64))

    @property
    def n_utts(self) -> int:
        return len(self.speaker)

    @property
    def n_clusters(self) -> int:
        return int(self.speaker.max()) + 1 if len(self.speaker) else 0

    @property
    def n_strata(self) -> int:
        return int(self.stratum.max()) + 1 if len(self.stratum) else 0


def hierarchical_weights(
    clusters: Clusters,
    n_boot: int,
    rng: np.random.Generator,
    speakers: bool = True,
    utterances: bool = True,
) -> np.ndarray:
    """[n_boot, utterances] draw counts. `speakers`: resample each stratum's speakers;
    `utterances`: resample each drawn speaker's utterances (False: keep all of them, so
    only the speaker level varies; both False: every weight 1)."""
    out = np.zeros((n_boot, clusters.n_utts), dtype=np.int64)
    members = [np.flatnonzero(clusters.speaker == k) for k in range(clusters.n_clusters)]
    for stratum in range(clusters.n_strata):
        spk = np.unique(clusters.speaker[clusters.stratum == stratum])
        if speakers:
            counts = rng.multinomial(len(spk), np.full(len(spk), 1.0 / len(spk)), size=n_boot)
        else:
            counts = np.ones((n_boot, len(spk)), dtype=np.int64)
        for j, k in enumerate(spk):
            utts = members[k]
            if utterances:
                # c independent draws of n from n utterances sum to one multinomial of c * n
                out[:, utts] = rng.multinomial(counts[:, j] * len(utts),
                                               np.full(len(utts), 1.0 / len(utts)))  # fmt: skip
            else:
                out[:, utts] = counts[:, j : j + 1]
    return out


class HierarchicalDraws:
    """The resampling of one task's test set, shared by every system compared on it.

    `seed_metrics(per_seed, metric, open_set)` gives one system's `SeedMetrics`: its metric
    per seed on all utterances, under each full hierarchical draw, and under speaker-only
    draws (for the speaker / utterance split of the variance).
    """

    def __init__(self, clusters: Clusters, n_boot: int = 1000, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.clusters = clusters
        self.weights = hierarchical_weights(clusters, n_boot, rng)
        self.speaker_weights = hierarchical_weights(clusters, n_boot, rng, utterances=False)
        self.utts: list[str] | None = None  # the first system's utterances, in trial order

    @property
    def n_boot(self) -> int:
        return len(self.weights)

    def seed_metrics(
        self, per_seed: Sequence[TrialScores], metric: str, open_set: bool
    ) -> SeedMetrics:
        self.utts = self.utts or list(per_seed[0].utts)
        if len(self.utts) != self.clusters.n_utts or any(ts.utts != self.utts for ts in per_seed):
            raise ApmError(
                "a paired bootstrap needs every system and seed to score the same utterances "
                "(one trials file, same order)"
            )
        n = self.clusters.n_utts
        return SeedMetrics(
            system_metric(per_seed, metric, np.ones((1, n)), open_set)[:, 0],
            system_metric(per_seed, metric, self.weights, open_set),
            system_metric(per_seed, metric, self.speaker_weights, open_set),
            self.clusters.n_clusters - self.clusters.n_strata,
        )


@dataclass(frozen=True)
class SeedMetrics:
    """One system's (or one linear combination of systems') metric on one task."""

    full: np.ndarray  # [S] per seed, all utterances
    boot: np.ndarray  # [S, B] per seed, under each hierarchical draw
    speaker_boot: np.ndarray  # [S, B] per seed, under each speaker-only draw
    test_df: int  # degrees of freedom of the test-set level: clusters - strata

    def __sub__(self, other: SeedMetrics) -> SeedMetrics:
        return self.combine([(1.0, self), (-1.0, other)])

    @staticmethod
    def combine(terms: Sequence[tuple[float, SeedMetrics]]) -> SeedMetrics:
        """sum of coefficient * metric, seed by seed and draw by draw (paired)."""
        shapes = {t.boot.shape for _, t in terms}
        if len(shapes) != 1:
            raise ApmError(f"paired terms need the same seeds and draws, got shapes {shapes}")
        return SeedMetrics(
            sum(c * t.full for c, t in terms),
            sum(c * t.boot for c, t in terms),
            sum(c * t.speaker_boot for c, t in terms),
            min(t.test_df for _, t in terms),
        )

    def seeds(self, index: np.ndarray) -> SeedMetrics:
        """The same metric on a subset (or reordering) of the seeds."""
        return SeedMetrics(self.full[index], self.boot[index], self.speaker_boot[index],
                           self.test_df)  # fmt: skip
