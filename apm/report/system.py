"""Stage 7 for one system: metrics of every scored task, results.{json,md} and plots.

`exp/<system>/results.json` (what `collect_results` and egs/olr/local/reproduce_tables.sh read):

    {
      "system": "apm_am",
      "languages": ["ct-cn", ...],          # languages.txt, the classifier's class order
      "backend": "lr",                      # primary back-end (scores/backend.yaml), or null
      "tasks": {                            # scored tasks, in the order asked for
        "task_full": {
          "n_utts_total": 240,              # utterances the task has (in its trials);
                                            # n_utts below counts those scored
          ...apm.metrics.evaluate_task keys: open_set, n_trials, n_trials_skipped, n_utts,
             n_unknown_utts, cavg, cavg_threshold, min_cavg, min_cavg_threshold, eer (%),
             accuracy (%), per_language {lang: {n_utts, accuracy, eer, cost}},
             confusion {rows, columns, counts},
          "extra_backends": {"cosine": {cavg, min_cavg, eer, accuracy}, ...},
          # with scores/calibrated/<task>.score (stage 6 with dev sets; apm.metrics.cllr):
          "uncalibrated_cllr", "cllr", "min_cllr",   # multiclass Cllr (bits) of the primary
                                            # scores, of the calibrated ones, and its minimum
          "actual_cavg", "calibrated_min_cavg",  # Cavg of the calibrated detection llrs at
                                            # the Bayes threshold 0, and over all thresholds
          "calibrated_accuracy"             # % identified by the calibrated posteriors
        }, ...
      },
      "missing_tasks": ["task_noisy"]       # asked for but without scores/<task>.score
    }

A task is open-set when its `utt2lang` has languages outside `languages.txt`; those
utterances must be exactly the ones without a target trial (the unknown class of the
open-set Cavg). Plots: `plots/det.png` (every task) and `plots/confusion_<task>.png`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import yaml

from apm.backend.scoring import CALIBRATED
from apm.data.trials import read_trials
from apm.metrics import align_trials, det_curve, evaluate_task, read_languages, read_scores
from apm.metrics.cllr import calibration_metrics
from apm.metrics.trialscores import TrialScores, format_ids
from apm.report.plots import plot_confusion, plot_det
from apm.utils import ApmError, atomic_write, read_kv

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("cavg", "min_cavg", "eer", "accuracy")


def _open_set(ts: TrialScores, utt2lang_path: Path, languages: list[str]) -> bool:
    """Whether the task is open-set, after checking utt2lang against the trials."""
    utt2lang = read_kv(utt2lang_path)
    absent = [u for u in ts.utts if u not in utt2lang]
    if absent:
        raise ApmError(
            f"{utt2lang_path}: no language for {len(absent)} trial utterances, e.g. "
            f"{format_ids(absent, len(absent))}"
        )
    foreign = {u for u in ts.utts if utt2lang[u] not in languages}
    utt_cls = ts.utt_cls
    for u, cls in zip(ts.utts, utt_cls, strict=True):
        expected = None if u in foreign else utt2lang[u]
        found = None if cls == ts.n_lang else ts.languages[cls]
        if expected != found:
            raise ApmError(
                f"{utt2lang_path}: utterance {u} is '{utt2lang[u]}' but its target trial is "
                f"{found or 'missing'} (system languages: {' '.join(languages)}); the trials "
                "and utt2lang of this task disagree, regenerate them"
            )
    return bool(foreign)


def _task_size(trials: list) -> int:
    """Utterances the task has: those of its trials (an utterance of utt2lang without trials
    is not part of the task, so not a skipped one)."""
    return len({t.utt for t in trials})


def scored_fewer(results: dict) -> dict[str, tuple[int, int]]:
    """{task: (utterances scored, utterances it has)} of the tasks scored on fewer
    utterances than they have (skipped with --skip-bad true)."""
    out = {}
    for task, r in results.get("tasks", {}).items():
        total = r.get("n_utts_total")
        if total is not None and r["n_utts"] < total:
            out[task] = (r["n_utts"], total)
    return out


def _score_files(scores_dir: Path, task: str) -> dict[str | None, Path]:
    """{None: primary score file, backend: extra score file} of a task that exist."""
    files: dict[str | None, Path] = {}
    if (scores_dir / f"{task}.score").is_file():
        files[None] = scores_dir / f"{task}.score"
    for path in sorted(scores_dir.glob(f"{task}.*.score")):
        files[path.name[len(task) + 1 : -len(".score")]] = path
    return files


def _primary_backend(scores_dir: Path) -> str | None:
    path = scores_dir / "backend.yaml"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return (yaml.safe_load(f) or {}).get("primary")


def evaluate_system(
    system_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    tasks: list[str],
    skip_bad: bool = False,
) -> tuple[dict, dict[str, TrialScores]]:
    """(results.json content, the primary TrialScores per scored task).

    `skip_bad` drops the trials of utterances without scores (counted in n_trials_skipped).
    """
    system_dir, data_dir = Path(system_dir), Path(data_dir)
    languages = read_languages(system_dir)
    scores_dir = system_dir / "scores"
    results: dict = {
        "system": system_dir.name,
        "languages": languages,
        "backend": _primary_backend(scores_dir),
        "tasks": {},
        "missing_tasks": [],
    }
    primary: dict[str, TrialScores] = {}
    for task in tasks:
        files = _score_files(scores_dir, task)
        if None not in files:
            results["missing_tasks"].append(task)
            continue
        trials_path = data_dir / task / "trials"
        trials = read_trials(trials_path)
        ts = align_trials(trials, read_scores(files.pop(None)), trials_path, skip_bad)
        open_set = _open_set(ts, data_dir / task / "utt2lang", languages)
        entry = evaluate_task(ts, open_set)
        entry["n_utts_total"] = _task_size(trials)
        calibrated = scores_dir / CALIBRATED / f"{task}.score"
        if calibrated.is_file():
            cal_ts = align_trials(
                trials, read_scores(calibrated), trials_path, skip_bad, warn=False
            )
            entry.update(calibration_metrics(ts, cal_ts, open_set))
        entry["extra_backends"] = {}
        for backend, path in files.items():
            # warned for the primary back-end already; the others skip the same utterances
            # unless their score files differ
            extra_ts = align_trials(trials, read_scores(path), trials_path, skip_bad, warn=False)
            if extra_ts.n_skipped != ts.n_skipped:
                log.warning("%s: %d trials skipped (primary back-end: %d)", path,
                            extra_ts.n_skipped, ts.n_skipped)  # fmt: skip
            extra = evaluate_task(extra_ts, open_set)
            entry["extra_backends"][backend] = {k: extra[k] for k in SUMMARY_KEYS}
        results["tasks"][task] = entry
        primary[task] = ts
        log.info("%s %s: Cavg %.4f  EER %.2f%%%s", system_dir.name, task, entry["cavg"],
                 entry["eer"], "  (open-set)" if open_set else "")  # fmt: skip
    return results, primary


def render_system_md(results: dict) -> str:
    """results.md: the per-task table, per-language breakdowns and extra back-ends."""
    out = [f"# {results['system']}", ""]
    if results["backend"]:
        out += [f"Primary back-end: `{results['backend']}`.", ""]
    out += [
        "Cavg: OLR challenge definition (21 thresholds, 4 decimals); min Cavg: exact minimum "
        "over all thresholds; EER over pooled trials; accuracy: best-scored language of the "
        "known-language utterances.",
        "",
        "| task | set | Cavg | min Cavg | EER % | accuracy % | utts (unknown) | trials skipped |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, r in results["tasks"].items():
        out.append(
            f"| {task} | {'open' if r['open_set'] else 'closed'} | {r['cavg']:.4f} | "
            f"{r['min_cavg']:.4f} | {r['eer']:.2f} | {_num(r['accuracy'])} | "
            f"{r['n_utts']} ({r['n_unknown_utts']}) | {r['n_trials_skipped']} |"
        )
    calibrated = {t: r for t, r in results["tasks"].items() if r.get("cllr") is not None}
    if calibrated:
        out += [
            "",
            "Calibrated scores (`scores/calibrated/`, multiclass logistic-regression calibration "
            "on the dev sets): multiclass Cllr in bits (log2 of the languages = uninformative) "
            "before and after calibration, min Cllr (best scale and offsets on the task "
            "itself), actual Cavg (Bayes decisions at llr 0) and min Cavg of the same llrs.",
            "",
            "| task | Cllr uncalibrated | Cllr | min Cllr | actual Cavg | min Cavg |",
            "|---|---|---|---|---|---|",
        ]
        for task, r in calibrated.items():
            out.append(
                f"| {task} | {r['uncalibrated_cllr']:.4f} | {r['cllr']:.4f} | "
                f"{r['min_cllr']:.4f} | {r['actual_cavg']:.4f} | {r['calibrated_min_cavg']:.4f} |"
            )
    for task, r in results["tasks"].items():
        out += ["", f"## {task}", "", "| language | utts | accuracy % | EER % | C_L |",
                "|---|---|---|---|---|"]  # fmt: skip
        for lang, v in r["per_language"].items():
            out.append(
                f"| {lang} | {v['n_utts']} | {_num(v['accuracy'])} | {_num(v['eer'])} | "
                f"{v['cost']:.4f} |"
            )
        if r["extra_backends"]:
            out += [
                "",
                "| back-end | Cavg | min Cavg | EER % | accuracy % |",
                "|---|---|---|---|---|",
            ]
            for name, v in r["extra_backends"].items():
                out.append(
                    f"| {name} | {v['cavg']:.4f} | {v['min_cavg']:.4f} | {v['eer']:.2f} | "
                    f"{_num(v['accuracy'])} |"
                )
    fewer = scored_fewer(results)
    if fewer:
        out += [""] + [
            f"Note: {task} scored on {n} of {total} utterances (the others were skipped "
            "with --skip-bad true: no features, x-vector or scores)."
            for task, (n, total) in fewer.items()
        ]
    if results["missing_tasks"]:
        out += [
            "",
            f"Not scored (no `scores/<task>.score`): {', '.join(results['missing_tasks'])}.",
        ]
    return "\n".join(out) + "\n"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def report_system(
    system_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    tasks: list[str],
    skip_bad: bool = False,
) -> dict | None:
    """Write results.json, results.md and plots of a system; None if it has no scores."""
    system_dir = Path(system_dir)
    results, primary = (
        evaluate_system(system_dir, data_dir, tasks, skip_bad)
        if (system_dir / "scores").is_dir()
        else ({}, {})
    )
    if not primary:
        # outputs of an earlier report would describe scores that no longer exist
        for name in ("results.json", "results.md"):
            (system_dir / name).unlink(missing_ok=True)
        return None
    with atomic_write(system_dir / "results.json", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    with atomic_write(system_dir / "results.md", encoding="utf-8") as f:
        f.write(render_system_md(results))
    curves = {}
    for task, ts in primary.items():
        curves[task] = det_curve(ts.score[ts.is_target], ts.score[~ts.is_target])
        conf = results["tasks"][task]["confusion"]
        plot_confusion(conf["rows"], conf["columns"], np.array(conf["counts"]),
                       system_dir / "plots" / f"confusion_{task}.png",
                       f"{system_dir.name} {task}")  # fmt: skip
    plot_det(curves, system_dir / "plots" / "det.png", f"DET: {system_dir.name}")
    return results
