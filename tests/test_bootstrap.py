"""Weighted Cavg/EER against the plain metrics; hierarchical draws; contrasts, Holm, power and
the A/A check on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from apm.metrics.bootstrap import (
    Clusters,
    HierarchicalDraws,
    SeedMetrics,
    hierarchical_weights,
    weighted_cavg,
    weighted_eer,
)
from apm.metrics.cavg import cavg_curve, challenge_cavg, challenge_thresholds
from apm.metrics.eer import eer
from apm.metrics.inference import Contrast, aa_coverage, holm
from apm.metrics.trialscores import TrialScores
from apm.utils import ApmError


def make_trials(rng, n_utts=200, n_lang=4, unknown=0, sep=1.0, noise=1.0) -> TrialScores:
    """Every utterance against every language; target trials score `sep` higher on average."""
    cls = np.concatenate([rng.integers(n_lang, size=n_utts), np.full(unknown, n_lang)])
    utt = np.repeat(np.arange(len(cls)), n_lang)
    lang = np.tile(np.arange(n_lang), len(cls))
    is_target = cls[utt] == lang
    score = rng.normal(size=len(utt)) * noise + sep * is_target
    return TrialScores([f"L{i}" for i in range(n_lang)], [f"u{i}" for i in range(len(cls))],
                       lang, utt, cls[utt], score, is_target)  # fmt: skip


def with_scores(ts: TrialScores, score: np.ndarray) -> TrialScores:
    return TrialScores(ts.languages, ts.utts, ts.lang, ts.utt, ts.cls, score, ts.is_target)


def repeated(ts: TrialScores, counts: np.ndarray) -> TrialScores:
    """The trials of utterance i repeated counts[i] times, as separate utterances."""
    keep = np.repeat(np.arange(len(ts.score)), counts[ts.utt])
    kept_utts, utt = np.unique(ts.utt[keep], return_inverse=True)
    return TrialScores(ts.languages, [ts.utts[i] for i in kept_utts], ts.lang[keep], utt,
                       ts.cls[keep], ts.score[keep], ts.is_target[keep])  # fmt: skip


@pytest.mark.parametrize("open_set", [False, True])
def test_weight_one_equals_challenge_cavg(open_set: bool) -> None:
    ts = make_trials(np.random.default_rng(1), unknown=40 if open_set else 0)
    curve, _ = cavg_curve(ts, challenge_thresholds(ts.score), open_set)
    got = weighted_cavg(ts, np.ones((1, len(ts.utts))), open_set)[0]
    assert got == pytest.approx(curve.min(), abs=1e-12)
    assert round(got, 4) == challenge_cavg(ts, open_set).cavg


def test_weight_one_equals_eer() -> None:
    ts = make_trials(np.random.default_rng(2))
    ts = with_scores(ts, np.round(ts.score, 1))  # ties
    got = weighted_eer(ts, np.ones((1, len(ts.utts))))[0]
    assert got == pytest.approx(eer(ts.score[ts.is_target], ts.score[~ts.is_target]), abs=1e-9)


@pytest.mark.parametrize("open_set", [False, True])
def test_integer_weights_equal_repeated_utterances(open_set: bool) -> None:
    rng = np.random.default_rng(3)
    ts = make_trials(rng, unknown=30 if open_set else 0)
    counts = rng.multinomial(len(ts.utts), np.full(len(ts.utts), 1 / len(ts.utts)), size=3)
    cavgs = weighted_cavg(ts, counts, open_set)
    eers = weighted_eer(ts, counts)
    for row, c, e in zip(counts, cavgs, eers, strict=True):
        rep = repeated(ts, row)
        curve, _ = cavg_curve(rep, challenge_thresholds(rep.score), open_set)
        assert c == pytest.approx(curve.min(), abs=1e-12)
        assert e == pytest.approx(eer(rep.score[rep.is_target], rep.score[~rep.is_target]))


def clustered(rng, n_lang=4, spk_per_lang=6, utts_per_spk=12, spk_sd=1.0, utt_sd=0.3):
    """Utterances grouped by speaker; a speaker's target trials share an offset of sd
    `spk_sd` (how well that speaker is recognised). Returns (trials, clusters)."""
    n_utts = n_lang * spk_per_lang * utts_per_spk
    cls = np.repeat(np.arange(n_lang), spk_per_lang * utts_per_spk)
    speaker = np.repeat(np.arange(n_lang * spk_per_lang), utts_per_spk)
    offset = rng.normal(size=n_lang * spk_per_lang) * spk_sd
    utt = np.repeat(np.arange(n_utts), n_lang)
    lang = np.tile(np.arange(n_lang), n_utts)
    is_target = cls[utt] == lang
    score = rng.normal(size=len(utt)) * utt_sd + (1.0 + offset[speaker[utt]]) * is_target
    ts = TrialScores([f"L{i}" for i in range(n_lang)], [f"u{i}" for i in range(n_utts)], lang,
                     utt, cls[utt], score, is_target)  # fmt: skip
    return ts, Clusters(cls, speaker)


def test_hierarchical_weights_resample_speakers_within_language() -> None:
    rng = np.random.default_rng(10)
    ts, clusters = clustered(rng, n_lang=3, spk_per_lang=4, utts_per_spk=5)
    w = hierarchical_weights(clusters, 500, rng)
    # every language keeps its size: 4 speakers x 5 utterances drawn per language
    for lang in range(3):
        assert np.all(w[:, clusters.stratum == lang].sum(axis=1) == 20)
    # a speaker's utterances are drawn in multiples of its size (5 per draw of the speaker)
    per_spk = np.stack([w[:, clusters.speaker == k].sum(axis=1) for k in range(12)], axis=1)
    assert np.all(per_spk % 5 == 0) and (per_spk == 0).any()  # some speakers left out
    # speaker-only draws: a speaker's utterances all share its count
    ws = hierarchical_weights(clusters, 50, rng, utterances=False)
    for k in range(12):
        block = ws[:, clusters.speaker == k]
        assert np.all(block == block[:, :1])
    assert np.all(hierarchical_weights(clusters, 3, rng, speakers=False, utterances=False) == 1)
    # utterance-level only (one speaker per utterance): the flat bootstrap
    flat = hierarchical_weights(Clusters.flat(60), 200, rng)
    assert np.all(flat.sum(axis=1) == 60) and flat.max() > 1


def test_clusters_from_speaker_lists() -> None:
    c = Clusters.of(
        ["a", "b", "c", "d"], [0, 0, 1, 1], {"a": "s1", "b": "s1", "c": "s1", "d": "s2"}
    )
    # s1 in two languages is two clusters
    assert c.n_clusters == 3 and c.n_strata == 2 and c.speaker[0] == c.speaker[1]
    with pytest.raises(ApmError, match="without a speaker"):
        Clusters.of(["a", "x"], [0, 0], {"a": "s1"})


def _seed_systems(rng, ts, clusters, n_seeds, shift=0.0, seed_sd=0.3):
    """Two systems on the same clustered test set; each seed adds its own target-score offset
    (seed variance) and trial noise; B's targets are raised by `shift`."""

    def one(extra):
        return [with_scores(ts, ts.score + rng.normal(size=len(ts.score)) * 0.3
                            + (rng.normal() * seed_sd + extra) * ts.is_target)
                for _ in range(n_seeds)]  # fmt: skip

    return one(0.0), one(shift)


def test_clustered_data_gives_wider_intervals_than_the_flat_bootstrap() -> None:
    rng = np.random.default_rng(11)
    ts, clusters = clustered(rng, spk_sd=1.0)
    a, b = _seed_systems(rng, ts, clusters, 4, seed_sd=0.0)
    # speaker effects that differ between the systems: the difference is clustered too
    spk_effect = rng.normal(size=clusters.n_clusters) * 0.5
    b = [with_scores(x, x.score + spk_effect[clusters.speaker[x.utt]] * x.is_target) for x in b]
    widths = {}
    for name, cl in (("flat", Clusters.flat(clusters.n_utts)), ("hier", clusters)):
        draws = HierarchicalDraws(cl, n_boot=300, seed=1)
        diff = draws.seed_metrics(a, "cavg", False) - draws.seed_metrics(b, "cavg", False)
        widths[name] = np.sqrt(Contrast.of(diff).var_test)
    assert widths["hier"] > 1.5 * widths["flat"]


def test_contrast_of_identical_and_planted_differences() -> None:
    rng = np.random.default_rng(12)
    ts, clusters = clustered(rng)
    draws = HierarchicalDraws(clusters, n_boot=200, seed=2)
    a, b = _seed_systems(rng, ts, clusters, 5, shift=1.0)
    ma, mb = draws.seed_metrics(a, "cavg", False), draws.seed_metrics(b, "cavg", False)
    zero = Contrast.of(ma - ma)
    assert zero.estimate == 0.0 and zero.se() == 0.0 and zero.p_value == 1.0
    c = Contrast.of(ma - mb)  # B separates better: A - B > 0
    low, high = c.interval()
    assert 0 < low < c.estimate < high and c.p_value < 0.01
    assert c.half_width == pytest.approx((high - low) / 2)
    # the components add up, and more seeds shrink only the seed part
    assert c.se() ** 2 == pytest.approx(c.var_seed / 5 + c.var_test)
    assert c.var_speaker + c.var_utterance == pytest.approx(c.var_test)
    assert c.mdd(n_seeds=50) < c.mdd() and c.mdd() > 2.8 * c.se() * 0.95
    need = c.seeds_for(c.mdd(n_seeds=20))
    assert need is not None and need <= 20 and c.mdd(n_seeds=need) <= c.mdd(n_seeds=20)
    assert c.seeds_for(np.sqrt(c.var_test)) is None  # test-set level alone is above it
    with pytest.raises(ApmError, match="at least 2 seeds"):
        Contrast.of(ma.seeds(np.array([0])) - mb.seeds(np.array([0])))


def test_difference_in_differences_is_a_linear_combination() -> None:
    rng = np.random.default_rng(13)
    ts, clusters = clustered(rng)
    draws = HierarchicalDraws(clusters, n_boot=50, seed=3)
    systems = [draws.seed_metrics(s, "cavg", False) for s in _seed_systems(rng, ts, clusters, 3)]
    systems += [draws.seed_metrics(s, "cavg", False) for s in _seed_systems(rng, ts, clusters, 3)]
    did = SeedMetrics.combine(
        [(1, systems[0]), (-1, systems[1]), (-1, systems[2]), (1, systems[3])]
    )
    by_hand = (systems[0] - systems[1]) - (systems[2] - systems[3])
    np.testing.assert_allclose(did.boot, by_hand.boot)
    np.testing.assert_allclose(did.full, by_hand.full)


def test_holm_step_down() -> None:
    # hand-checked: sorted p 0.01, 0.02, 0.04, 0.30 -> x4, x3, x2, x1, then running max
    np.testing.assert_allclose(holm([0.04, 0.01, 0.30, 0.02]), [0.08, 0.04, 0.30, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    assert holm([0.01]).tolist() == [0.01]


def test_aa_coverage_of_the_t_interval_on_clustered_seeds() -> None:
    """Identical configurations (one system's seeds split in halves): the 95% t interval
    should cover 0 about 95% of the time; the joint percentile one covers less with few seeds."""
    rng = np.random.default_rng(14)
    ts, clusters = clustered(rng, n_lang=3, spk_per_lang=4, utts_per_spk=6)
    draws = HierarchicalDraws(clusters, n_boot=200, seed=4)
    systems = [draws.seed_metrics(_seed_systems(rng, ts, clusters, 8, seed_sd=0.5)[0], "cavg",
                                  False) for _ in range(25)]  # fmt: skip
    cov = aa_coverage(systems, 8, rng)
    assert cov.n == 200 and cov.seeds_per_arm == 4
    assert cov.t_interval >= 0.90
    assert cov.percentile < cov.t_interval
    with pytest.raises(ApmError, match="at least 4 seeds"):
        aa_coverage([systems[0].seeds(np.arange(3))], 2, rng)


def test_draws_refuse_unpaired_utterances() -> None:
    rng = np.random.default_rng(6)
    ts, clusters = clustered(rng)
    draws = HierarchicalDraws(clusters, n_boot=10)
    draws.seed_metrics([ts, ts], "cavg", False)
    other = with_scores(ts, ts.score)
    other.utts = list(reversed(ts.utts))
    with pytest.raises(ApmError, match="same utterances"):
        draws.seed_metrics([other, other], "cavg", False)
