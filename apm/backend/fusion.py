"""Score-level fusion of several systems: linear logistic-regression fusion learned on dev.

The primary stage 6 scores of S systems (`exp/<system>/scores/<task>.score`, same languages
in the same order) are fused as

    l = sum_s scale_s * scores_s + offset     (`apm.backend.calibration`, one scale per
                                               system, one offset per language)

with the scales and offsets trained on the dev sets' utterances of known languages (their
`utt2lang`), so the fused scores are calibrated as well. The fused system is written like a
scored system, `exp/<name>/`, so stage 7 reports it as one more row:

  languages.txt               the systems' languages
  scores/<task>.score         fused log-posteriors (equal priors), OLR matrix format
  scores/calibrated/<task>.score  the same scores (fusion is calibrated by construction)
  fusion.json                 systems, dev sets, the scales and offsets, dev utterances

Every task is fused on the utterances all systems scored; a task some system has no scores
for is an error naming it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from apm.backend.calibration import fit_affine
from apm.backend.scoring import CALIBRATED
from apm.metrics.languages import read_languages
from apm.metrics.scorefile import read_scores, write_matrix
from apm.metrics.trialscores import format_ids
from apm.utils import ApmError, atomic_write, read_kv

log = logging.getLogger(__name__)


def _task_matrices(
    exp: Path, systems: list[str], task: str, languages: list[str], skip_bad: bool
) -> tuple[list[str], list[np.ndarray]]:
    """(utterances every system scored, one [N, K] matrix per system in that order)."""
    files = [exp / s / "scores" / f"{task}.score" for s in systems]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise ApmError(f"fusion: no scores for {task}: {', '.join(absent)} missing; run stage 6 "
                       "for every fused system")  # fmt: skip
    scores = [read_scores(f) for f in files]
    for sc in scores:
        if sc.languages != languages:
            raise ApmError(f"{sc.path}: languages {sc.languages} differ from {languages}; only "
                           "systems trained on the same languages can be fused")  # fmt: skip
    common = set(scores[0].utts).intersection(*(sc.utts for sc in scores[1:]))
    utts = sorted(common)
    for sc in scores:
        extra = [u for u in sc.utts if u not in common]
        if extra:
            msg = (f"{sc.path}: {len(extra)} utterances not scored by every fused system, e.g. "
                   f"{format_ids(extra, len(extra))}")  # fmt: skip
            if not skip_bad:
                raise ApmError(msg + "; rescore them or pass --skip-bad true")
            log.warning("%s; left out (--skip-bad true)", msg)
    if not utts:
        raise ApmError(f"fusion: no utterance of {task} is scored by every system")
    mats = []
    for sc in scores:
        index = sc.utt_index()
        mats.append(sc.matrix[[index[u] for u in utts]])
        if not np.isfinite(mats[-1]).all():
            raise ApmError(f"{sc.path}: missing or non-finite scores; fusion needs every "
                           "utterance scored against every language")  # fmt: skip
    return utts, mats


def fuse_systems(
    exp_dir: str | os.PathLike,
    systems: list[str],
    data_dir: str | os.PathLike,
    dev_sets: list[str],
    tasks: list[str],
    name: str = "fusion",
    skip_bad: bool = False,
) -> Path:
    """Learn the fusion of `systems` on `dev_sets` and write `exp_dir/<name>` (module
    docstring) with the fused scores of `tasks`; returns that directory."""
    exp, data = Path(exp_dir), Path(data_dir)
    if len(systems) < 2:
        raise ApmError(f"fusion needs at least 2 systems, got {systems}")
    if len(set(systems)) != len(systems) or name in systems:
        raise ApmError(f"fusion: systems {systems} repeat or include the output name '{name}'")
    if not dev_sets:
        raise ApmError("fusion: no dev sets to learn the weights on; give --dev-sets")
    out = exp / name
    if (out / "final.pt").exists() or (out / "config.yaml").exists():
        raise ApmError(f"{out} is a trained system, not a fusion; choose another --name")
    languages = read_languages(exp / systems[0])
    lang_idx = {lang: i for i, lang in enumerate(languages)}
    dev_mats: list[list[np.ndarray]] = [[] for _ in systems]
    dev_labels = []
    for dev in dev_sets:
        utts, mats = _task_matrices(exp, systems, dev, languages, skip_bad)
        utt2lang = read_kv(data / dev / "utt2lang")
        known = [i for i, u in enumerate(utts) if utt2lang.get(u) in lang_idx]
        dev_labels.append(np.array([lang_idx[utt2lang[utts[i]]] for i in known], dtype=np.int64))
        for s, m in enumerate(mats):
            dev_mats[s].append(m[known])
    labels = np.concatenate(dev_labels)
    fusion = fit_affine([np.concatenate(m) for m in dev_mats], labels, what="fusion")
    log.info("fusion of %s on %d dev utterances (%s): scales %s", " ".join(systems), len(labels),
             " ".join(dev_sets), " ".join(f"{a:.3f}" for a in fusion.scales))  # fmt: skip
    with atomic_write(out / "languages.txt", encoding="utf-8") as f:
        f.write("\n".join(languages) + "\n")
    for task in tasks:
        utts, mats = _task_matrices(exp, systems, task, languages, skip_bad)
        fused = fusion(mats)
        write_matrix(out / "scores" / f"{task}.score", languages, utts, fused)
        write_matrix(out / "scores" / CALIBRATED / f"{task}.score", languages, utts, fused)
    meta = {
        "systems": systems,
        "dev_sets": dev_sets,
        "n_dev_utts": len(labels),
        "scales": dict(zip(systems, fusion.scales.tolist(), strict=True)),
        "offsets": dict(zip(languages, fusion.offsets.tolist(), strict=True)),
        "tasks": tasks,
    }
    with atomic_write(out / "fusion.json", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return out
