"""Benchmark: vectorised Cavg against a plain-Python loop of the same definition.

Builds an open-set task of about 1M trials (10 target languages, every utterance scored
against every language, some unknown-language utterances), writes it as OLR files, and times
- end to end: the `compute_cavg -matrix --open-set` tool as a fresh process (start-up,
  reading both files, Cavg), against the same job done the way the OLR challenge script
  does it: plain-Python line reading and `plain_loop_cavg` (a lower bound on the script's
  time: the script itself takes about 2 s per 100k trials, 20 s at 1M);
- reading trials + scores alone (vectorised readers vs the line-by-line ones);
- the Cavg computation alone, vectorised vs `plain_loop_cavg` from tests/test_metrics.py
  (the independent implementation the tests check against),
then prints the values and the speed ratios.

    .venv/bin/python local/bench_cavg.py [--trials 1000000] [--seed 777]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from test_metrics import plain_loop_cavg  # noqa: E402

from apm.data.trials import Trial, read_trials, write_trials  # noqa: E402
from apm.metrics import align_trials, challenge_cavg, read_scores, write_matrix  # noqa: E402
from apm.metrics.scorefile import _read_matrix_lines as read_scores_lines  # noqa: E402
from apm.metrics.trialscores import read_trial_table  # noqa: E402

N_LANG = 10


def make_task(n_trials: int, seed: int, root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    langs = [f"lang{i}" for i in range(N_LANG)]
    n_utt = n_trials // N_LANG
    truth = rng.integers(0, N_LANG + 1, n_utt)  # N_LANG = unknown language
    utts = [f"utt{j:07d}" for j in range(n_utt)]
    scores = rng.normal(0.0, 1.0, (n_utt, N_LANG))
    known = truth < N_LANG
    scores[np.flatnonzero(known), truth[known]] += 2.0
    trials = [
        Trial(lang, utt, bool(t == i))
        for utt, t in zip(utts, truth, strict=True)
        for i, lang in enumerate(langs)
    ]
    write_trials(root / "trials", trials)
    write_matrix(root / "scores", langs, utts, scores)
    return root / "trials", root / "scores"


def plain_read(trials_path: Path, score_path: Path) -> list[tuple[str, str, bool, float]]:
    """Trials joined with matrix scores by plain line reading, as the challenge script does."""
    with open(score_path, encoding="utf-8") as f:
        langs = f.readline().split()
        scores = {}
        for line in f:
            fields = line.split()
            scores[fields[0]] = dict(zip(langs, map(float, fields[1:]), strict=True))
    out = []
    with open(trials_path, encoding="utf-8") as f:
        for line in f:
            lang, utt, label = line.split()
            out.append((lang, utt, label == "target", scores[utt][lang]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=777)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trials_path, score_path = make_task(args.trials, args.seed, Path(tmp))
        cmd = [sys.executable, "-m", "apm.bin.compute_cavg", "-matrix", str(trials_path),
               str(score_path), "--open-set"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        t0 = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        t_tool = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain = plain_loop_cavg(plain_read(trials_path, score_path), open_set=True)
        t_plain_e2e = time.perf_counter() - t0
        t0 = time.perf_counter()
        ts = align_trials(read_trial_table(trials_path), read_scores(score_path), trials_path)
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        align_trials(read_trials(trials_path), read_scores_lines(score_path), trials_path)
        t_read_lines = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = challenge_cavg(ts, open_set=True).cavg
    t_fast = time.perf_counter() - t0
    tuples = [
        (ts.languages[lang], ts.utts[utt], bool(tgt), float(s))
        for lang, utt, tgt, s in zip(ts.lang, ts.utt, ts.is_target, ts.score, strict=True)
    ]
    t0 = time.perf_counter()
    slow = plain_loop_cavg(tuples, open_set=True)
    t_slow = time.perf_counter() - t0
    tool = float(out.split()[1])
    print(f"trials: {len(ts.score)}  languages: {ts.n_lang}  unknown utts: {ts.n_unknown_utts}")
    print(
        f"end to end, compute_cavg -matrix --open-set (new process): {t_tool:.2f} s -> {out.strip()}"
    )
    print(f"end to end, plain Python (OLR script style): {t_plain_e2e:.2f} s -> Cavg {plain}")
    print(f"end-to-end speed ratio: {t_plain_e2e / t_tool:.1f}x vs plain Python, "
          f"{20.0 * args.trials / 1e6 / t_tool:.1f}x vs the OLR script's ~2 s per 100k trials; "
          f"identical: {tool == plain == fast}")  # fmt: skip
    print(f"read trials + matrix scores: {t_read:.2f} s vectorised, {t_read_lines:.2f} s by lines")
    print(f"Cavg vectorised: {fast}  in {t_fast:.3f} s")
    print(f"Cavg plain loop: {slow}  in {t_slow:.1f} s")
    print(f"speed ratio: {t_slow / t_fast:.0f}x  identical: {fast == slow}")


if __name__ == "__main__":
    main()
