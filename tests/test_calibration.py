"""Multiclass Cllr, LR calibration and fusion (apm.metrics.cllr, apm.backend.calibration,
apm.backend.fusion), with hand-checked cases."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_backend import LANGS, make_system

from apm.backend import BackendConfig, score_system
from apm.backend.calibration import fit_affine
from apm.backend.fusion import fuse_systems
from apm.data.trials import Trial
from apm.metrics import align_trials, read_scores
from apm.metrics.cllr import (
    calibration_metrics,
    detection_llrs,
    min_multiclass_cllr,
    multiclass_cllr,
)
from apm.metrics.scorefile import Scores
from apm.metrics.trialscores import trial_table
from apm.utils import ApmError, read_kv


def test_cllr_perfect_uninformative_and_hand_computed():
    labels = np.array([0, 1, 2, 3])
    perfect = 1000.0 * np.eye(4)
    assert multiclass_cllr(perfect, labels) < 1e-12
    for k in (2, 4, 10):  # P(k | x) = 1/K for every utterance: log2(K) bits
        assert multiclass_cllr(np.zeros((k, k)), np.arange(k)) == pytest.approx(np.log2(k))
    # K = 2: a class-0 utterance with P(0|x) = 0.8, a class-1 one with P(1|x) = 0.5:
    # Cllr = -(log2 0.8 + log2 0.5) / 2 = (0.321928 + 1) / 2
    ll = np.log([[0.8, 0.2], [0.5, 0.5]])
    assert multiclass_cllr(ll, np.array([0, 1])) == pytest.approx(0.6609640474, abs=1e-9)
    # a constant per utterance (log-likelihoods vs log-posteriors) changes nothing
    assert multiclass_cllr(ll + [[3.0], [-7.0]], np.array([0, 1])) == pytest.approx(0.660964, 1e-6)
    # confidently wrong costs more than saying nothing
    assert multiclass_cllr(-10 * np.eye(3), np.arange(3)) > np.log2(3)


def test_cllr_weights_every_class_equally():
    """Three class-0 utterances at P = 0.5 and one certain class-1 utterance: the mean over
    classes, (1 + 0) / 2, not over utterances (3/4)."""
    ll = np.array([[0.0, 0.0]] * 3 + [[-1000.0, 0.0]])
    assert multiclass_cllr(ll, np.array([0, 0, 0, 1])) == pytest.approx(0.5)


def test_min_cllr_is_the_best_affine_calibration():
    rng = np.random.default_rng(0)
    k, n = 3, 3000
    labels = rng.integers(0, k, n)
    good = rng.normal(0, 1, (n, k))
    good[np.arange(n), labels] += 2.0
    for scores in (good, 10 * good + [3.0, -2.0, 0.0], 0.1 * good):
        actual, minimum = multiclass_cllr(scores, labels), min_multiclass_cllr(scores, labels)
        assert minimum <= actual + 1e-9
        calibrated = fit_affine([scores], labels, l2=0.0)([scores])
        assert multiclass_cllr(calibrated, labels) == pytest.approx(minimum, abs=1e-6)
    # badly scaled scores lose a lot to calibration; no calibration recovers information
    assert multiclass_cllr(10 * good, labels) > min_multiclass_cllr(10 * good, labels) + 0.5
    # constant scores, balanced classes: offsets cannot help, min Cllr = log2(K)
    balanced = np.repeat(np.arange(k), 10)
    assert min_multiclass_cllr(np.zeros((30, k)), balanced) == pytest.approx(np.log2(k), abs=1e-6)


def test_fit_affine_recovers_the_scale_and_offsets():
    """Labels drawn from softmax(2 s + b): the fit finds scale 2 and b (up to a constant)."""
    rng = np.random.default_rng(1)
    n, b = 20000, np.array([0.5, -0.5, 0.0])
    s = rng.normal(0, 1, (n, 3))
    p = np.exp(2 * s + b)
    p /= p.sum(axis=1, keepdims=True)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    # the objective weights classes equally: the offsets found are b plus log of 1 / class size
    counts = np.bincount(labels, minlength=3)
    cal = fit_affine([s], labels)
    assert cal.scales[0] == pytest.approx(2.0, abs=0.1)
    expected = b - np.log(counts / counts.mean())
    np.testing.assert_allclose(cal.offsets - cal.offsets.mean(), expected - expected.mean(),
                               atol=0.08)  # fmt: skip


def test_fusion_weights_ignore_a_useless_system():
    rng = np.random.default_rng(2)
    n, k = 2000, 4
    labels = rng.integers(0, k, n)
    good = rng.normal(0, 1, (n, k))
    good[np.arange(n), labels] += 2.5
    noise = rng.normal(0, 1, (n, k))
    fused = fit_affine([good, noise], labels)
    assert fused.scales[0] > 0.5 and abs(fused.scales[1]) < 0.1
    with pytest.raises(ApmError, match="at least 2"):
        fit_affine([good], np.zeros(n, dtype=int))


def test_detection_llrs_hand_computed():
    ll = np.log([[2.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    llr = detection_llrs(ll)
    np.testing.assert_allclose(llr[0], [np.log(2), -np.log(1.5), -np.log(1.5)])
    np.testing.assert_allclose(llr[1], 0.0, atol=1e-15)


def _trial_scores(matrix: np.ndarray, utts: list[str], truth: list[str]):
    trials = [Trial(lang, u, lang == t) for u, t in zip(utts, truth, strict=True) for lang in LANGS]
    scores = Scores(LANGS, utts, np.asarray(matrix, dtype=np.float64), "mem")
    return align_trials(trial_table(trials), scores, "trials")


def test_actual_cavg_of_calibrated_scores():
    utts = [f"u{i}" for i in range(6)]
    truth = [LANGS[i % 3] for i in range(6)]
    labels = np.array([i % 3 for i in range(6)])
    confident = np.log(np.full((6, 3), 1e-6))
    confident[np.arange(6), labels] = 0.0
    ts = _trial_scores(confident, utts, truth)
    m = calibration_metrics(ts, ts, open_set=False)
    assert m["actual_cavg"] == 0.0 and m["calibrated_min_cavg"] == 0.0 and m["cllr"] < 1e-4
    # language 0's column 20 too high: every other utterance is a language-0 false alarm
    # (llr 6.9) and misses its own language (llr -5.5), so at the Bayes threshold 0 each
    # C_L is 0.5; a threshold at -5.5 keeps only the false alarms of language 0: (0.5+0+0)/3
    shifted = confident + [20.0, 0.0, 0.0]
    ts = _trial_scores(shifted, utts, truth)
    m = calibration_metrics(ts, ts, open_set=False)
    assert m["actual_cavg"] == 0.5 and m["calibrated_min_cavg"] == pytest.approx(0.1667)
    assert m["cllr"] > np.log2(3)  # confidently wrong on two thirds of the utterances


def _two_systems(tmp_path):
    """exp/sys and exp/sys2 (other x-vectors of the same utterances), scored, dev task_full."""
    tasks = ["task_full", "task_open"]
    conf = BackendConfig(backends=["lr"])
    for seed, root in enumerate((tmp_path, tmp_path / "other")):
        score_system(make_system(root, seed=seed), root / "data", "train", tasks, conf,
                     dev_sets=["task_full"])  # fmt: skip
    shutil.move(tmp_path / "other" / "exp" / "sys", tmp_path / "exp" / "sys2")  # scores moved
    return tasks


def _dev_cllr(path, utt2lang):
    s = read_scores(path)
    return multiclass_cllr(s.matrix, np.array([LANGS.index(utt2lang[u]) for u in s.utts]))


def test_fuse_two_systems(tmp_path):
    tasks = _two_systems(tmp_path)
    out = fuse_systems(tmp_path / "exp", ["sys", "sys2"], tmp_path / "data", ["task_full"], tasks)
    meta = json.loads((out / "fusion.json").read_text())
    assert meta["systems"] == ["sys", "sys2"] and list(meta["offsets"]) == LANGS
    assert meta["n_dev_utts"] == 30
    for task in tasks:
        fused = read_scores(out / "scores" / f"{task}.score")
        assert fused.languages == LANGS and np.allclose(np.exp(fused.matrix).sum(axis=1), 1)
        assert (out / "scores" / "calibrated" / f"{task}.score").read_text() == (
            out / "scores" / f"{task}.score"
        ).read_text()
    # on its own training data the fusion is at least as good as each calibrated system
    utt2lang = read_kv(tmp_path / "data" / "task_full" / "utt2lang")
    fused = _dev_cllr(out / "scores" / "task_full.score", utt2lang)
    for system in ("sys", "sys2"):
        alone = _dev_cllr(tmp_path / "exp" / system / "scores/calibrated/task_full.score", utt2lang)
        assert fused <= alone + 1e-3


def test_fusion_errors(tmp_path):
    tasks = _two_systems(tmp_path)
    exp, data = tmp_path / "exp", tmp_path / "data"
    with pytest.raises(ApmError, match="at least 2 systems"):
        fuse_systems(exp, ["sys"], data, ["task_full"], tasks)
    with pytest.raises(ApmError, match="no dev sets"):
        fuse_systems(exp, ["sys", "sys2"], data, [], tasks)
    with pytest.raises(ApmError, match=r"no scores for task_cross: .*sys2/scores/task_cross"):
        fuse_systems(exp, ["sys", "sys2"], data, ["task_full"], ["task_cross"])
    (exp / "sys2" / "scores" / "task_cross.score").parent.mkdir(exist_ok=True)
    lines = (exp / "sys2" / "scores" / "task_full.score").read_text().splitlines()
    (exp / "sys2" / "scores" / "task_full.score").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ApmError, match="1 utterances not scored by every fused system"):
        fuse_systems(exp, ["sys", "sys2"], data, ["task_full"], tasks)
    fuse_systems(exp, ["sys", "sys2"], data, ["task_full"], tasks, skip_bad=True)
    (exp / "trained").mkdir()
    (exp / "trained" / "final.pt").write_bytes(b"")
    with pytest.raises(ApmError, match="is a trained system"):
        fuse_systems(exp, ["sys", "sys2"], data, ["task_full"], tasks, name="trained")


def test_fuse_step_script_and_report(tmp_path, repo_root, shell_env):
    """steps/fuse.sh writes exp/fusion, which stage 7's report shows as one more row with
    its calibrated metrics."""
    import subprocess

    tasks = _two_systems(tmp_path)
    script = str(repo_root / "steps/fuse.sh")
    r = subprocess.run([script, "exp", "sys"], cwd=tmp_path, env=shell_env, capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 1 and "Usage:" in r.stderr
    cmd = [script, "--data", "data", "--dev-sets", "task_full", "--tasks", " ".join(tasks),
           "exp", "sys", "sys2"]  # fmt: skip
    r = subprocess.run(cmd, cwd=tmp_path, env=shell_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "exp/log/fuse.log").is_file()
    cmd = [str(repo_root / "steps/report.sh"), "--data", "data", "--test-sets", " ".join(tasks),
           "--output", "RESULTS.md", "exp", "sys", "fusion"]  # fmt: skip
    r = subprocess.run(cmd, cwd=tmp_path, env=shell_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "RESULTS.md").read_text()
    assert "| fusion | 0." in md and "Calibrated (multiclass" in md
    results = json.loads((tmp_path / "exp/fusion/results.json").read_text())
    entry = results["tasks"]["task_open"]
    assert entry["open_set"] and entry["cllr"] == entry["uncalibrated_cllr"]  # fused = calibrated
    assert entry["calibrated_min_cavg"] <= entry["actual_cavg"]
