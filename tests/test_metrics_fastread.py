"""Vectorised readers of trials and score files (apm.metrics.fastparse) give exactly what the
line-by-line readers give, errors and their line numbers included."""

from __future__ import annotations

import numpy as np
import pytest

from apm.data.trials import read_trials
from apm.metrics import align_trials, read_scores
from apm.metrics.scorefile import (
    _read_matrix_fast,
    _read_matrix_lines,
    _read_pairs_fast,
    _read_pairs_lines,
)
from apm.metrics.trialscores import _read_trial_table_fast, read_trial_table, trial_table
from apm.utils import ApmError

TRIALS = "en u1 target\nfr u1 nontarget\n\n  en\tu2   nontarget \nfr u2 target"
MATRIX = "en fr\n\nu1 1.5 -2\n  u2\t3e-1 4 \r\nu3 0 0"
PAIRS = "en u1 1.5\nfr u1 -2\n\n  fr\tu2 4 \r\nen u2 .3"


def same_table(a, b):
    assert (a.languages, a.utts) == (b.languages, b.utts)
    for key in ("lang", "utt", "is_target"):
        assert np.array_equal(getattr(a, key), getattr(b, key))


def same_scores(a, b):
    assert (a.languages, a.utts) == (b.languages, b.utts)
    assert np.array_equal(a.matrix, b.matrix, equal_nan=True)


@pytest.mark.parametrize("text", [TRIALS, TRIALS + "\n", TRIALS.replace("\n", "\r\n")])
def test_trials_fast_equals_lines(tmp_path, text):
    path = tmp_path / "trials"
    path.write_bytes(text.encode())
    fast = _read_trial_table_fast(path)
    same_table(fast, trial_table(read_trials(path)))
    assert fast.languages == ["en", "fr"] and fast.utts == ["u1", "u2"]
    assert fast.is_target.tolist() == [True, False, False, True]


@pytest.mark.parametrize("fast, lines, text", [
    (_read_matrix_fast, _read_matrix_lines, MATRIX),
    (_read_matrix_fast, _read_matrix_lines, MATRIX + "\n"),
    (_read_pairs_fast, _read_pairs_lines, PAIRS),
    (_read_pairs_fast, _read_pairs_lines, "en u1 1\nfr u2 2\n"),  # NaN cells
])  # fmt: skip
def test_scores_fast_equals_lines(tmp_path, fast, lines, text):
    path = tmp_path / "scores"
    path.write_bytes(text.encode())
    same_scores(fast(path), lines(path))


def test_random_large_files(tmp_path):
    rng = np.random.default_rng(0)
    langs = [f"l{i}" for i in range(7)]
    utts = [f"utt{j}" for j in rng.permutation(500)]
    truth = rng.integers(0, 8, len(utts))
    lines = [f"{lang} {u} {'target' if truth[j] == i else 'nontarget'}"
             for j, u in enumerate(utts) for i, lang in enumerate(langs)]  # fmt: skip
    (tmp_path / "trials").write_text("\n".join(lines) + "\n")
    scores = rng.normal(size=(len(utts), len(langs)))
    rows = [
        u + " " + " ".join(f"{v:.6f}" for v in row) for u, row in zip(utts, scores, strict=True)
    ]
    (tmp_path / "scores").write_text(" ".join(langs) + "\n" + "\n".join(rows) + "\n")
    table = read_trial_table(tmp_path / "trials")
    same_table(table, trial_table(read_trials(tmp_path / "trials")))
    same_scores(read_scores(tmp_path / "scores"), _read_matrix_lines(tmp_path / "scores"))
    a = align_trials(table, read_scores(tmp_path / "scores"), "t")
    b = align_trials(read_trials(tmp_path / "trials"), _read_matrix_lines(tmp_path / "scores"), "t")
    assert a.utts == b.utts and np.array_equal(a.score, b.score) and np.array_equal(a.cls, b.cls)


def test_non_ascii_falls_back(tmp_path):
    path = tmp_path / "trials"
    # str.split() separates at an em space, bytes.split() would not
    path.write_text("zh u\u00e9 target\nen u\u00e9 nontarget\nen\u2003x nontarget\n")
    table = read_trial_table(path)
    assert table.utts == ["u\u00e9", "x"] and table.languages == ["en", "zh"]
    same_table(table, trial_table(read_trials(path)))


def _message(fn, path):
    with pytest.raises(ApmError) as e:
        fn(path)
    return str(e.value)


@pytest.mark.parametrize("text, fragment", [
    ("en u1 target\nen u1 nontarget\n", ":2: trial (en, u1) appears twice"),
    ("en u1 target\nen u2 target extra\n", ":2: expected 3 whitespace-separated fields"),
    ("en u1 target\nen u2 tgt\n", ":2: expected 3"),
    ("en u1 target\nen u2\nfr u1 nontarget nontarget\n", ":2: expected 3"),
    ("\n\n", "no trials"),
])  # fmt: skip
def test_trial_errors_are_the_line_readers(tmp_path, text, fragment):
    path = tmp_path / "trials"
    path.write_text(text)
    msg = _message(read_trial_table, path)
    assert fragment in msg and msg == _message(read_trials, path)


@pytest.mark.parametrize("fmt, text, fragment", [
    ("matrix", "en fr\nu1 1 2\nu1 3 4\n", ":3: utterance 'u1' is scored twice"),
    ("matrix", "en fr\nu1 1 nan\n", ":2: score is nan"),
    ("matrix", "en fr\nu1 1 inf\n", ":2: score is inf"),
    ("matrix", "en fr\nu1 1\n", ":2: 2 fields, expected 3"),
    ("matrix", "en fr\nu1 1 x2\n", ":2: score 'x2' is not a number"),
    ("matrix", "en u1 1.5\n", "looks like a pairs line"),
    ("matrix", "en en\nu1 1 2\n", "a language appears twice"),
    ("pairs", "en u1 1\nen u1 2\n", "(en, u1) is scored 2 times"),
    ("pairs", "en u1 1\nen u2\n", ":2: 2 fields"),
    ("pairs", "en fr\nu1 1 2\n", "looks like a matrix header"),
    ("pairs", "en u1 1\nfr u1 -inf\n", ":2: score is -inf"),
])  # fmt: skip
def test_score_errors_are_the_line_readers(tmp_path, fmt, text, fragment):
    path = tmp_path / "scores"
    path.write_text(text)
    msg = _message(lambda p: read_scores(p, fmt), path)
    lines = _read_matrix_lines if fmt == "matrix" else _read_pairs_lines
    assert fragment in msg and msg == _message(lines, path)


def test_align_on_a_table_skips_like_on_trials(tmp_path):
    (tmp_path / "trials").write_text(TRIALS)
    (tmp_path / "scores").write_text("en fr\nu2 1 2\n")
    table = read_trial_table(tmp_path / "trials")
    a = align_trials(table, read_scores(tmp_path / "scores"), "t", skip_missing=True)
    b = align_trials(read_trials(tmp_path / "trials"), read_scores(tmp_path / "scores"), "t",
                     skip_missing=True)  # fmt: skip
    assert a.n_skipped == b.n_skipped == 2 and a.utts == b.utts == ["u2"]
    assert np.array_equal(a.score, b.score) and np.array_equal(a.lang, b.lang)
    (tmp_path / "trials").write_text("en u1 target\nfr u1 target\n")
    with pytest.raises(ApmError, match="utterance u1 has more than one target trial"):
        align_trials(read_trial_table(tmp_path / "trials"), read_scores(tmp_path / "scores"), "t")
