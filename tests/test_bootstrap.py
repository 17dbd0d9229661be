"""Weighted Cavg/EER against the plain metrics, and the paired bootstrap on known answers."""

from __future__ import annotations

import numpy as np
import pytest

from apm.metrics.bootstrap import PairedBootstrap, weighted_cavg, weighted_eer
from apm.metrics.cavg import cavg_curve, challenge_cavg, challenge_thresholds
from apm.metrics.eer import eer
from apm.metrics.trialscores import TrialScores


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


def _systems(rng, n_seeds: int, shift: float = 0.0) -> tuple[list, list]:
    """Two systems over the same utterances: B's target scores raised by `shift`."""
    base = make_trials(rng, n_utts=400)
    a = [with_scores(base, base.score + rng.normal(size=len(base.score))) for _ in range(n_seeds)]
    b = [with_scores(base, base.score + rng.normal(size=len(base.score)) + shift * base.is_target)
         for _ in range(n_seeds)]  # fmt: skip
    return a, b


@pytest.mark.parametrize("metric", ["cavg", "eer"])
def test_identical_systems_give_an_interval_around_zero(metric: str) -> None:
    rng = np.random.default_rng(4)
    a, b = _systems(rng, n_seeds=5)
    boot = PairedBootstrap(len(a[0].utts), 5, n_boot=300, seed=1)
    same = boot.interval(boot.metrics(a, metric, False), boot.metrics(a, metric, False))
    assert same.low == same.high == same.estimate == 0.0
    assert same.verdict(-1) == "not resolved"
    # same distribution, different noise draws: no difference to find
    diff = boot.interval(boot.metrics(a, metric, False), boot.metrics(b, metric, False))
    assert diff.low < 0 < diff.high
    assert diff.verdict(-1) == diff.verdict(+1) == "not resolved"


@pytest.mark.parametrize("metric", ["cavg", "eer"])
def test_planted_difference_is_detected(metric: str) -> None:
    rng = np.random.default_rng(5)
    a, b = _systems(rng, n_seeds=5, shift=1.0)  # B separates better: A - B > 0
    boot = PairedBootstrap(len(a[0].utts), 5, n_boot=300, seed=2)
    got = boot.interval(boot.metrics(a, metric, False), boot.metrics(b, metric, False))
    assert got.low > 0 and got.low < got.estimate < got.high
    assert got.verdict(+1) == "supported" and got.verdict(-1) == "contradicted"
    assert got.half_width == pytest.approx((got.high - got.low) / 2)


def test_bootstrap_refuses_unpaired_utterances() -> None:
    rng = np.random.default_rng(6)
    a, _ = _systems(rng, n_seeds=2)
    other = make_trials(rng, n_utts=400)
    other.utts.reverse()
    boot = PairedBootstrap(len(a[0].utts), 2, n_boot=10)
    boot.metrics(a, "cavg", False)
    with pytest.raises(Exception, match="same utterances"):
        boot.metrics([other, other], "cavg", False)
