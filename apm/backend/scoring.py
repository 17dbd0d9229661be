"""Stage 6: score every test task of a system with the configured back-ends.

Inputs (docs/recipe.md "Files between stages"): `exp/<system>/languages.txt`,
`exp/<system>/xvectors/<set>/{xvector,logits}.scp`, `data/<train>/utt2lang`,
`data/<task>/trials`. Outputs: `exp/<system>/scores/<task>.score` (primary back-end) and
`<task>.<backend>.score` (the others), OLR matrix format with columns in `languages.txt`
order and one row per trial utterance, sorted; `scores/backend.yaml` records the
configuration that produced them. With dev sets (`--dev-sets`), every back-end is also
calibrated on them (`apm.backend.calibration`) and `scores/calibrated/<same name>` holds the
calibrated log-posteriors; the raw score files do not depend on it. The fitted back-end,
calibration included, is saved in `exp/<system>/backend/` (`apm.backend.store`) and the
scores are computed with that saved copy, as the model package does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

import kaldiio
import numpy as np
import yaml

from apm.backend.calibration import fit_affine
from apm.backend.config import BackendConfig
from apm.backend.models import BACKENDS, EmbeddingProcessor
from apm.backend.store import FittedBackend, load_backend, save_backend
from apm.data.trials import read_trials
from apm.metrics.languages import read_languages
from apm.metrics.scorefile import write_matrix
from apm.metrics.trialscores import format_ids
from apm.utils import ApmError, atomic_write, read_kv

log = logging.getLogger(__name__)

CALIBRATED = "calibrated"  # scores/calibrated/<task>[.<backend>].score: calibrated log-posteriors


def load_vectors(
    scp: Path, utts: list[str], skip_bad: bool, what: str, warn: bool = True
) -> tuple[list[str], np.ndarray]:
    """Vectors of `utts` from a kaldiio scp: (utts found, n x dim float64 matrix).

    Missing utterances are an error naming the count and a few ids, or with `skip_bad`
    are left out and logged (unless `warn` is false: the caller reports them).
    """
    if not scp.is_file():
        raise ApmError(f"{scp}: not found; run the extraction (stage 5) for this set")
    wanted = set(utts)
    try:
        table = {k: v for k, v in kaldiio.load_scp_sequential(str(scp)) if k in wanted}
    except Exception as e:  # kaldiio raises assorted types for truncated or foreign arks
        raise ApmError(f"{scp}: cannot be read ({e}); rerun the extraction (stage 5)") from e
    missing = [u for u in utts if u not in table]
    if missing:
        msg = f"{scp}: no {what} for {len(missing)} of {len(utts)} utterances, e.g. " + format_ids(
            missing, len(missing)
        )
        if not skip_bad:
            raise ApmError(msg + "; rerun the extraction or pass --skip-bad true")
        if warn:
            log.warning("%s; skipped (--skip-bad true)", msg)
    found = [u for u in utts if u in table]
    if not found:
        raise ApmError(f"{scp}: none of the {len(utts)} utterances needed has a {what}")
    vectors = [np.asarray(table[u], dtype=np.float64).reshape(-1) for u in found]
    dims = {len(v) for v in vectors}
    if len(dims) != 1:
        raise ApmError(f"{scp}: {what}s of different sizes {sorted(dims)}")
    return found, np.stack(vectors)


def _warn_skipped(task: str, utts: list[str], found: dict[str, list[str]], files: str) -> None:
    """One warning per task for the utterances some back-end could not score."""
    kept = set(utts)
    for backend_found in found.values():
        kept &= set(backend_found)
    skipped = [u for u in utts if u not in kept]
    if not skipped:
        return
    per_backend = ", ".join(f"{b} {len(utts) - len(f)}" for b, f in found.items())
    log.warning(
        "%s: %d of %d trial utterances have no %s and are not scored (--skip-bad true; "
        "per back-end: %s), e.g. %s",
        task, len(skipped), len(utts), files, per_backend, format_ids(skipped, len(skipped)),
    )  # fmt: skip


def _training_data(
    system_dir: Path, data_dir: Path, train_set: str, languages: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    utt2lang = read_kv(data_dir / train_set / "utt2lang")
    scp = system_dir / "xvectors" / train_set / "xvector.scp"
    utts = sorted(utt2lang)
    # the training set's bad utterances may have been skipped upstream: use what exists
    utts, x = load_vectors(scp, utts, skip_bad=True, what="x-vector")
    lang_idx = {lang: i for i, lang in enumerate(languages)}
    foreign = sorted({utt2lang[u] for u in utts} - set(lang_idx))
    if foreign:
        raise ApmError(
            f"{data_dir / train_set}/utt2lang: languages {foreign} are not in "
            f"{system_dir}/languages.txt; the x-vectors come from another training set"
        )
    labels = np.array([lang_idx[utt2lang[u]] for u in utts])
    absent = [lang for i, lang in enumerate(languages) if not np.any(labels == i)]
    if absent:
        raise ApmError(f"{scp}: no training x-vectors of languages {absent} in languages.txt")
    log.info(
        "back-end training data: %d x-vectors of dim %d, %d languages", *x.shape, len(languages)
    )
    return x, labels


def _task_utts(data_dir: Path, task: str, languages: list[str]) -> list[str]:
    path = data_dir / task / "trials"
    trials = read_trials(path)
    foreign = sorted({t.lang for t in trials} - set(languages))
    if foreign:
        raise ApmError(
            f"{path}: target languages {foreign} are not among the system's languages "
            f"{languages}; the system cannot score them"
        )
    return sorted({t.utt for t in trials})


def _scores(
    fb: FittedBackend, system_dir: Path, data_dir: Path, task: str, skip_bad: bool
) -> dict[str, tuple[list[str], np.ndarray]]:
    """{back-end: (utterances scored, scores)} of a task's trial utterances."""
    utts = _task_utts(data_dir, task, fb.languages)
    xvec_dir = system_dir / "xvectors" / task
    files = {"xvector": ("xvector.scp", "x-vector"), "logits": ("logits.scp", "logits vector")}
    loaded = {}
    scores = {}
    for name in fb.models:
        kind = fb.input(name)
        if kind not in loaded:
            scp, what = files[kind]
            loaded[kind] = load_vectors(xvec_dir / scp, utts, skip_bad, what, False)
            if kind == "logits" and loaded[kind][1].shape[1] != len(fb.languages):
                raise ApmError(
                    f"{xvec_dir}/logits.scp: {loaded[kind][1].shape[1]} outputs per utterance "
                    f"but {len(fb.languages)} languages in {system_dir}/languages.txt"
                )
        found, vectors = loaded[kind]
        scores[name] = (found, fb.scores(name, vectors))
    kinds = " or ".join(k for k in ("x-vector", "logits")
                        if k.replace("-", "") in loaded)  # fmt: skip
    _warn_skipped(task, utts, {b: f for b, (f, _) in scores.items()}, f"{kinds} in {xvec_dir}")
    return scores


def _calibrate(
    fb: FittedBackend, system_dir: Path, data_dir: Path, dev_sets: list[str], skip_bad: bool
) -> None:
    """Fit the calibration of every back-end on the scores of the dev sets' utterances of
    known languages (those of other languages have no class to calibrate)."""
    lang_idx = {lang: i for i, lang in enumerate(fb.languages)}
    dev: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {b: [] for b in fb.models}
    n_unknown = 0
    for name in dev_sets:
        utt2lang = read_kv(data_dir / name / "utt2lang")
        for backend, (found, matrix) in _scores(fb, system_dir, data_dir, name, skip_bad).items():
            known = [i for i, u in enumerate(found) if utt2lang.get(u) in lang_idx]
            labels = np.array([lang_idx[utt2lang[found[i]]] for i in known], dtype=np.int64)
            dev[backend].append((matrix[known], labels))
            if backend == fb.config.primary:
                n_unknown += len(found) - len(known)
    fb.info["dev_sets"], fb.info["n_dev_utts"] = list(dev_sets), {}
    for backend, parts in dev.items():
        matrix = np.concatenate([m for m, _ in parts])
        labels = np.concatenate([y for _, y in parts])
        fb.calibration[backend] = fit_affine([matrix], labels, what=f"calibration of {backend}")
        fb.info["n_dev_utts"][backend] = len(labels)
        log.info("calibration of %s on %d dev utterances (%s): scale %.3f", backend,
                 len(labels), " ".join(dev_sets), fb.calibration[backend].scales[0])  # fmt: skip
    if n_unknown:
        log.info("calibration: %d dev utterances of languages outside languages.txt not used",
                 n_unknown)  # fmt: skip


def fit_backend(
    system_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    train_set: str,
    conf: BackendConfig,
    dev_sets: list[str] = (),
    skip_bad: bool = False,
) -> FittedBackend:
    """The back-ends of `conf` fitted on `train_set`'s x-vectors, calibrated on `dev_sets`."""
    system_dir, data_dir = Path(system_dir), Path(data_dir)
    languages = read_languages(system_dir)
    models = {b: BACKENDS[b].from_config(conf) for b in conf.backends}
    processor = None
    info: dict = {"train_set": train_set, "n_train": 0}
    if any(m.input == "xvector" for m in models.values()):
        x, labels = _training_data(system_dir, data_dir, train_set, languages)
        processor = EmbeddingProcessor(conf.lda_dim, conf.lda_impl).fit(x, labels)
        z = processor(x)
        for m in models.values():
            if m.input == "xvector":
                m.fit(z, labels)
        info["n_train"] = len(x)
    fb = FittedBackend(conf, languages, processor, models, {}, info)
    if dev_sets:
        _calibrate(fb, system_dir, data_dir, list(dev_sets), skip_bad)
    return fb


def backend_dir(system_dir: str | os.PathLike) -> Path:
    """Where stage 6 saves a system's fitted back-end."""
    return Path(system_dir) / "backend"


def load_system_backend(system_dir: str | os.PathLike) -> FittedBackend:
    """The back-end stage 6 saved for `system_dir`."""
    return load_backend(backend_dir(system_dir),
                        f"rerun stage 6 (steps/score.sh ... {system_dir} <tasks>) to write it")  # fmt: skip


def score_system(
    system_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    train_set: str,
    tasks: list[str],
    conf: BackendConfig,
    skip_bad: bool = False,
    dev_sets: list[str] = (),
) -> list[Path]:
    """Fit the configured back-ends (and their calibration on `dev_sets`), save them in
    `backend/`, and write the score files of `tasks` with the saved copy; returns the raw
    score files (calibrated ones go to `scores/calibrated/` with the same names)."""
    system_dir, data_dir = Path(system_dir), Path(data_dir)
    save_backend(backend_dir(system_dir), fit_backend(system_dir, data_dir, train_set, conf,
                                                      dev_sets, skip_bad))  # fmt: skip
    fb = load_system_backend(system_dir)  # score with exactly what was saved
    written = []
    for task in tasks:
        for backend, (found, matrix) in _scores(fb, system_dir, data_dir, task, skip_bad).items():
            name = conf.score_name(task, backend)
            path = system_dir / "scores" / name
            write_matrix(path, fb.languages, found, matrix)
            log.info("%s: %d utterances scored with %s", path, len(found), backend)
            written.append(path)
            calibrated = fb.calibrated(backend, matrix)
            cal_path = system_dir / "scores" / CALIBRATED / name
            if calibrated is None:
                cal_path.unlink(missing_ok=True)  # left by a run with dev sets
            else:
                write_matrix(cal_path, fb.languages, found, calibrated)
    with atomic_write(system_dir / "scores" / "backend.yaml", encoding="utf-8") as f:
        yaml.safe_dump(asdict(conf), f, sort_keys=False)
    return written
