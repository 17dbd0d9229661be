"""apm.metrics: Cavg (challenge and exact), EER, score files, bad input, the drop-in CLI.

`plain_loop_cavg` is an independent implementation written straight from the AP17-OLR
definition (one Python loop per threshold, language and trial); local/bench_cavg.py imports it.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from apm.data.trials import Trial, write_trials
from apm.metrics import (
    align_trials,
    challenge_cavg,
    eer,
    evaluate_task,
    min_cavg,
    read_scores,
    write_matrix,
)
from apm.utils import ApmError


def plain_loop_cavg(trials: list[tuple[str, str, bool, float]], open_set: bool) -> float:
    """Cavg of (lang, utt, is_target, score) trials by the definition, with plain loops."""
    langs = sorted({lang for lang, _, _, _ in trials})
    utt_lang = {utt: lang for lang, utt, tgt, _ in trials if tgt}
    classes = langs + ["<unknown>"] if open_set else langs
    p_target = 0.5
    p_non = (1 - p_target) / (len(langs) if open_set else len(langs) - 1)
    labelled = [(lang, utt_lang.get(utt, "<unknown>"), score) for lang, utt, _, score in trials]
    n_trials = {(lang, c): 0 for lang in langs for c in classes}
    for lang, cls, _ in labelled:
        n_trials[lang, cls] += 1
    scores = [s for _, _, s in labelled]
    lo, hi = min(scores), max(scores)
    step = (hi - lo) / 20
    costs = []
    for k in range(21):
        threshold = lo + k * step
        # misses of target trials (L, L), false alarms of the others (L, N)
        errors = dict.fromkeys(n_trials, 0)
        for lang, cls, score in labelled:
            if cls == lang:
                errors[lang, cls] += score < threshold
            else:
                errors[lang, cls] += score >= threshold
        lang_costs = []
        for lang in langs:
            n_tgt = n_trials[lang, lang]
            p_miss = errors[lang, lang] / n_tgt if n_tgt else 0.0
            p_fa = [
                errors[lang, c] / n_trials[lang, c] if c != lang and n_trials[lang, c] else 0.0
                for c in classes
            ]
            lang_costs.append(p_target * p_miss + p_non * sum(p_fa))
        costs.append(sum(lang_costs) / len(langs))
    return round(min(costs), 4)


def random_task(rng, n_lang=4, n_utt=60, n_unknown=0, decimals=None):
    """Full trials (every utt x every language) with scores; returns tuples and pieces."""
    langs = [f"l{i}" for i in range(n_lang)]
    truth = {f"u{j:03d}": langs[rng.integers(n_lang)] for j in range(n_utt)}
    truth.update({f"x{j:03d}": None for j in range(n_unknown)})
    out = []
    for utt, true in truth.items():
        for lang in langs:
            score = rng.normal(1.5 if lang == true else 0.0)
            if decimals is not None:
                score = round(score, decimals)
            out.append((lang, utt, lang == true, float(score)))
    return out


def write_files(tmp_path, tuples, fmt="matrix"):
    trials = [Trial(lang, utt, tgt) for lang, utt, tgt, _ in tuples]
    write_trials(tmp_path / "trials", trials)
    path = tmp_path / f"scores.{fmt}"
    if fmt == "pairs":
        path.write_text("".join(f"{lang} {utt} {s!r}\n" for lang, utt, _, s in tuples))
    else:
        langs = sorted({t[0] for t in tuples})
        utts = list(dict.fromkeys(t[1] for t in tuples))
        m = np.zeros((len(utts), len(langs)))
        for lang, utt, _, s in tuples:
            m[utts.index(utt), langs.index(lang)] = s
        path.write_text(
            " ".join(langs)
            + "\n"
            + "".join(
                u + " " + " ".join(repr(float(v)) for v in row) + "\n"
                for u, row in zip(utts, m, strict=True)
            )
        )
    return tmp_path / "trials", path


def load(tmp_path, tuples, fmt="matrix"):
    trials_path, score_path = write_files(tmp_path, tuples, fmt)
    from apm.data.trials import read_trials

    return align_trials(read_trials(trials_path), read_scores(score_path, fmt), trials_path)


@pytest.mark.parametrize("fmt", ["matrix", "pairs"])
@pytest.mark.parametrize("open_set", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_plain_loop(tmp_path, fmt, open_set, seed):
    rng = np.random.default_rng(seed)
    # rounded scores make ties with thresholds and between trials likely
    tuples = random_task(
        rng, n_lang=3 + seed, n_unknown=15 if open_set else 0, decimals=1 if seed == 2 else None
    )
    ts = load(tmp_path, tuples, fmt)
    fast = challenge_cavg(ts, open_set)
    assert fast.cavg == plain_loop_cavg(tuples, open_set)
    assert min_cavg(ts, open_set).cavg <= fast.cavg


def test_hand_computed_case_with_ties(tmp_path):
    # 2 languages, 2 utts each; scores in {0, 1, 2}, so thresholds are 0, 0.1, ..., 2.0
    tuples = [
        ("a", "a1", True, 2.0), ("b", "a1", False, 1.0),
        ("a", "a2", True, 1.0), ("b", "a2", False, 1.0),
        ("b", "b1", True, 2.0), ("a", "b1", False, 0.0),
        ("b", "b2", True, 0.0), ("a", "b2", False, 1.0),
    ]  # fmt: skip
    ts = load(tmp_path, tuples)
    # t in (0, 1]: a: miss 0, fa(b utts) 1/2 -> .25 ; b: miss 1/2, fa 2/2 -> .75 ; Cavg .5
    # t in (1, 2]: a: miss 1/2, fa 0 -> .25 ; b: miss 1/2, fa 0 -> .25 ; Cavg .25
    # t = 0: everything accepted: fa 1 for both -> Cavg .5
    res = challenge_cavg(ts)
    assert res.cavg == 0.25
    assert res.threshold == pytest.approx(1.1)
    assert np.allclose(res.lang_costs, [0.25, 0.25])
    exact = min_cavg(ts)
    assert exact.cavg == 0.25 and 1.0 < exact.threshold <= 2.0


def test_constant_scores(tmp_path):
    tuples = [(lang, f"{t}{i}", lang == t, 3.0) for t in "abc" for i in range(2) for lang in "abc"]
    ts = load(tmp_path, tuples)
    # one threshold value, everything accepted: each language pays P_nontarget * 2 = 0.5
    assert challenge_cavg(ts).cavg == 0.5
    assert eer(ts.score[ts.is_target], ts.score[~ts.is_target]) == pytest.approx(50.0)


def test_language_without_target_trials(tmp_path):
    # "c" is a trial language but no utterance is of c: P_miss(c) = 0, P_fa(., c) = 0
    tuples = [
        ("a", "a1", True, 1.0), ("b", "a1", False, 0.0), ("c", "a1", False, 0.5),
        ("b", "b1", True, 1.0), ("a", "b1", False, 0.0), ("c", "b1", False, 1.0),
    ]  # fmt: skip
    ts = load(tmp_path, tuples)
    # t in (0.5, 1]: a, b perfect; c: fa(a utt)=0, fa(b utt)=1 -> 0.25 * 1 ; Cavg = .25/3
    assert challenge_cavg(ts).cavg == round(0.25 / 3, 4) == plain_loop_cavg(tuples, False)


def test_unknown_utterances_open_set(tmp_path):
    tuples = [
        ("a", "a1", True, 1.0), ("b", "a1", False, 0.0),
        ("b", "b1", True, 1.0), ("a", "b1", False, 0.0),
        ("a", "x1", False, 1.0), ("b", "x1", False, 0.0),
    ]  # fmt: skip
    ts = load(tmp_path, tuples)
    assert ts.n_unknown_utts == 1
    # t in (0, 1]: only x1 accepted by a: C_a = (0.5/2) * 1 = .25, C_b = 0 -> Cavg .125
    assert challenge_cavg(ts, open_set=True).cavg == 0.125 == plain_loop_cavg(tuples, True)
    with pytest.raises(ApmError, match="no target trial.*x1.*--open-set"):
        challenge_cavg(ts, open_set=False)


def test_min_cavg_is_exact_minimum(tmp_path):
    rng = np.random.default_rng(5)
    tuples = random_task(rng, n_lang=3, n_utt=40, n_unknown=5)
    ts = load(tmp_path, tuples)
    exact = min_cavg(ts, open_set=True)
    # brute force at every distinct score and +inf
    from apm.metrics.cavg import cavg_curve

    cands = np.concatenate([np.unique(ts.score), [np.inf]])
    curve, _ = cavg_curve(ts, cands, open_set=True)
    assert exact.cavg == round(float(curve.min()), 4)
    assert np.allclose(exact.curve, curve)


@pytest.mark.parametrize("seed", [0, 1])
def test_eer_matches_sklearn_roc_interpolation(seed):
    rng = np.random.default_rng(seed)
    tgt = np.round(rng.normal(1.0, 1.0, 300), 1)
    non = np.round(rng.normal(0.0, 1.0, 900), 1)
    labels = np.r_[np.ones(len(tgt)), np.zeros(len(non))]
    fpr, tpr, _ = roc_curve(labels, np.r_[tgt, non])
    ref = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    assert eer(tgt, non) == pytest.approx(100 * ref, abs=1e-9)


def test_eer_separable_and_inverted():
    assert eer(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert eer(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 100.0


def test_evaluate_task_summary(tmp_path):
    rng = np.random.default_rng(3)
    ts = load(tmp_path, random_task(rng, n_lang=3, n_utt=30, n_unknown=4))
    res = evaluate_task(ts, open_set=True)
    assert res["n_unknown_utts"] == 4 and res["n_utts"] == 34 and res["n_trials"] == 102
    assert res["confusion"]["rows"][-1] == "unknown"
    assert sum(map(sum, res["confusion"]["counts"])) == 34
    costs = [v["cost"] for v in res["per_language"].values()]
    assert res["cavg"] == pytest.approx(np.mean(costs), abs=2e-4)
    assert sum(v["n_utts"] for v in res["per_language"].values()) == 30


# ---- score files and bad input ---------------------------------------------------------


def test_matrix_roundtrip(tmp_path):
    m = np.array([[0.5, -1.25], [2.0, 0.0]])
    write_matrix(tmp_path / "s", ["a", "b"], ["u1", "u2"], m)
    s = read_scores(tmp_path / "s", "matrix")
    assert s.languages == ["a", "b"] and s.utts == ["u1", "u2"]
    assert np.array_equal(s.matrix, m)


@pytest.mark.parametrize("fmt", ["matrix", "pairs"])
def test_missing_scores_reported_with_count_and_ids(tmp_path, fmt):
    tuples = random_task(np.random.default_rng(0), n_lang=2, n_utt=10)
    trials_path, score_path = write_files(tmp_path, tuples, fmt)
    lines = score_path.read_text().splitlines(keepends=True)
    score_path.write_text("".join(lines[:-3]))  # drop 3 utts (matrix) / 3 pairs
    from apm.data.trials import read_trials

    n = 6 if fmt == "matrix" else 3
    with pytest.raises(ApmError, match=rf"no score for {n} of 20 trials.*e\.g\. \(l"):
        align_trials(read_trials(trials_path), read_scores(score_path, fmt), trials_path)


def test_header_only_matrix_scores_no_trial(tmp_path):
    tuples = random_task(np.random.default_rng(0), n_lang=2, n_utt=10)
    trials_path, score_path = write_files(tmp_path, tuples)
    score_path.write_text(score_path.read_text().splitlines()[0] + "\n")  # languages, no utts
    from apm.data.trials import read_trials

    trials, scores = read_trials(trials_path), read_scores(score_path)
    assert scores.matrix.shape == (0, 2)
    with pytest.raises(ApmError, match="no score for 20 of 20 trials"):
        align_trials(trials, scores, trials_path)
    with pytest.raises(ApmError, match="no trial is left"):
        align_trials(trials, scores, trials_path, skip_missing=True)


@pytest.mark.parametrize(
    ("fmt", "text", "message"),
    [
        ("matrix", "a b\nu1 0 1\nu1 1 0\n", "scored twice"),
        ("pairs", "a u1 0\nb u1 1\na u1 2\n", r"\(a, u1\) is scored 2 times"),
        ("matrix", "a b\nu1 0 nan\n", "NaN/inf"),
        ("pairs", "a u1 inf\n", "NaN/inf"),
        ("matrix", "a u1 0.5\nb u1 0.2\n", "use -pairs"),
        ("pairs", "a b\nu1 0 1\n", "use -matrix"),
        ("pairs", "a b c\nu1 0 1 2\n", "use -matrix"),
        ("matrix", "a b\nu1 0\n", "expected 3"),
        ("matrix", "", "empty"),
    ],
)
def test_bad_score_files(tmp_path, fmt, text, message):
    (tmp_path / "s").write_text(text)
    with pytest.raises(ApmError, match=message):
        read_scores(tmp_path / "s", fmt)


def test_trial_language_absent_from_header(tmp_path):
    write_trials(tmp_path / "trials", [Trial("a", "u1", True), Trial("zz", "u1", False)])
    (tmp_path / "s").write_text("a b\nu1 0 1\n")
    from apm.data.trials import read_trials

    with pytest.raises(ApmError, match="zz .1 trials. are not in the scores"):
        align_trials(read_trials(tmp_path / "trials"), read_scores(tmp_path / "s"), "trials")


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "apm.bin.compute_cavg", *map(str, args)],
        capture_output=True,
        text=True,
    )


def test_cli_drop_in(tmp_path):
    tuples = random_task(np.random.default_rng(7), n_lang=3, n_utt=30, n_unknown=6)
    trials_path, score_path = write_files(tmp_path, tuples, "pairs")
    r = _cli("-pairs", trials_path, score_path, "--open-set", "--eer")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0] == f"Cavg {plain_loop_cavg(tuples, True)}"
    assert lines[1].startswith("EER ")
    r = _cli("-matrix", trials_path, score_path)
    assert r.returncode == 1 and "ERROR" in r.stderr and "use -pairs" in r.stderr
    assert "Traceback" not in r.stderr
