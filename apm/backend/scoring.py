"""Stage 6: score every test task of a system with the configured back-ends.

Inputs (docs/recipe.md "Files between stages"): `exp/<system>/languages.txt`,
`exp/<system>/xvectors/<set>/{xvector,logits}.scp`, `data/<train>/utt2lang`,
`data/<task>/trials`. Outputs: `exp/<system>/scores/<task>.score` (primary back-end) and
`<task>.<backend>.score` (the others), OLR matrix format with columns in `languages.txt`
order and one row per trial utterance, sorted; `scores/backend.yaml` records the
configuration that produced them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

import kaldiio
import numpy as np
import yaml

from apm.backend.config import BackendConfig
from apm.backend.models import BACKENDS, INPUTS, EmbeddingProcessor
from apm.data.trials import read_trials
from apm.metrics.languages import read_languages
from apm.metrics.scorefile import write_matrix
from apm.metrics.trialscores import format_ids
from apm.utils import ApmError, atomic_write, read_kv

log = logging.getLogger(__name__)


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


def score_system(
    system_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    train_set: str,
    tasks: list[str],
    conf: BackendConfig,
    skip_bad: bool = False,
) -> list[Path]:
    """Train the configured back-ends and write the score files of `tasks`; returns them."""
    system_dir, data_dir = Path(system_dir), Path(data_dir)
    languages = read_languages(system_dir)
    models = {b: BACKENDS[b].from_config(conf) for b in conf.backends}
    by_input = {i: [b for b, m in models.items() if m.input == i] for i in INPUTS}
    if by_input["xvector"]:
        x, labels = _training_data(system_dir, data_dir, train_set, languages)
        process = EmbeddingProcessor(conf.lda_dim, conf.lda_impl).fit(x, labels)
        z = process(x)
        for b in by_input["xvector"]:
            models[b].fit(z, labels)
    written = []
    for task in tasks:
        utts = _task_utts(data_dir, task, languages)
        xvec_dir = system_dir / "xvectors" / task
        scores = {}
        if by_input["xvector"]:
            found, x = load_vectors(xvec_dir / "xvector.scp", utts, skip_bad, "x-vector", False)
            z = process(x)
            scores.update({b: (found, models[b](z)) for b in by_input["xvector"]})
        if by_input["logits"]:
            found, logits = load_vectors(
                xvec_dir / "logits.scp", utts, skip_bad, "logits vector", False
            )
            if logits.shape[1] != len(languages):
                raise ApmError(
                    f"{xvec_dir}/logits.scp: {logits.shape[1]} outputs per utterance but "
                    f"{len(languages)} languages in {system_dir}/languages.txt"
                )
            scores.update({b: (found, models[b](logits)) for b in by_input["logits"]})
        kinds = " or ".join(
            k for k, used in (("x-vector", by_input["xvector"]), ("logits", by_input["logits"]))
            if used
        )  # fmt: skip
        _warn_skipped(task, utts, {b: f for b, (f, _) in scores.items()}, f"{kinds} in {xvec_dir}")
        for backend, (found, matrix) in scores.items():
            path = system_dir / "scores" / conf.score_name(task, backend)
            write_matrix(path, languages, found, matrix)
            log.info("%s: %d utterances scored with %s", path, len(found), backend)
            written.append(path)
    with atomic_write(system_dir / "scores" / "backend.yaml", encoding="utf-8") as f:
        yaml.safe_dump(asdict(conf), f, sort_keys=False)
    return written


def training_data(
    system_dir: str | os.PathLike, data_dir: str | os.PathLike, train_set: str, languages: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The x-vectors and label ids (in `languages` order) that stage 6 trains its back-ends
    on; used to fit the same back-ends again for a model package (`apm.infer.package`)."""
    return _training_data(Path(system_dir), Path(data_dir), train_set, languages)
