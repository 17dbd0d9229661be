"""Parallel, resumable PocketSphinx alignment of a list of cuts.

The cuts are split into `nj` jobs; each job runs in its own process with its own decoder and
writes `jobs/ali.<j>.{ark,scp}` then `jobs/ali.<j>.json` (its summary and a fingerprint of
its cuts and decoder settings). A rerun keeps every job whose summary exists with the same
fingerprint and no failures, so a killed run only redoes the unfinished jobs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from apm.align.arkio import read_labels, write_labels
from apm.align.config import AlignConfig
from apm.align.phones import SILENCE_ID
from apm.align.sphinx import SAMPLING_RATE, SphinxAligner
from apm.utils.dispatch import split
from apm.utils.errors import ApmError
from apm.utils.frames import fit_frame_count, num_frames
from apm.utils.io import atomic_write
from apm.utils.log import LogProgress, progress, setup_logging

log = logging.getLogger(__name__)

# Called with 1 per finished utterance: the bar's update in-process, a queue's put in workers.
_progress: Callable[[int], object] | None = None


@dataclass
class JobSummary:
    """What one job did; `failed` maps cut id -> reason."""

    fingerprint: str
    decoded: int = 0
    too_short: list[str] = field(default_factory=list)
    silence_only: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    audio_seconds: float = 0.0
    cpu_seconds: float = 0.0


def cut_frames(cut) -> int:
    """The cut's feature frame count (features attached), else the count its audio gives."""
    if cut.has_features:
        return int(cut.num_frames)
    return num_frames(cut.num_samples, cut.sampling_rate)


def load_int16(cut) -> np.ndarray:
    """The cut's audio (speed perturbation applied) as 16 kHz mono int16."""
    if cut.sampling_rate != SAMPLING_RATE:
        cut = cut.resample(SAMPLING_RATE)
    audio = cut.load_audio()
    audio = audio[0] if audio.ndim == 2 else audio
    return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)


def loudest_frame_db(samples: np.ndarray) -> float:
    """RMS level (dBFS) of the loudest 10 ms frame."""
    hop = SAMPLING_RATE // 100
    frames = samples[: len(samples) // hop * hop].astype(np.float64).reshape(-1, hop) / 32768
    if not len(frames):
        return -np.inf
    return float(10 * np.log10(np.max(np.mean(frames**2, axis=1)) + 1e-20))


def align_cut(aligner: SphinxAligner, cut, cfg: AlignConfig, summary: JobSummary) -> np.ndarray:
    """Labels of one cut on its feature frame grid.

    Audio too short to hold phones, or silent, gets all-silence labels and a warning instead of
    whatever the decoder hallucinates in it; a frame count off by more than the tolerance is an
    ApmError (the features come from other audio).
    """
    target = cut_frames(cut)
    if cut.duration < cfg.min_duration:
        log.warning(
            "%s: %.2f s < %.2f s, labelled all silence", cut.id, cut.duration, cfg.min_duration
        )
        summary.too_short.append(cut.id)
        return np.full(target, SILENCE_ID, dtype=np.int32)
    samples = load_int16(cut)
    summary.audio_seconds += len(samples) / SAMPLING_RATE
    if loudest_frame_db(samples) < cfg.silence_db:
        log.warning("%s: no frame above %.0f dBFS, labelled all silence", cut.id, cfg.silence_db)
        summary.silence_only.append(cut.id)
        return np.full(target, SILENCE_ID, dtype=np.int32)
    labels = aligner.decode(samples)
    summary.decoded += 1
    return fit_frame_count(labels, target, cut.id)


def fingerprint(cuts: Sequence, cfg: AlignConfig) -> str:
    settings = {
        k: v for k, v in asdict(cfg).items() if k in ("pocketsphinx", "min_duration", "silence_db")
    }
    blob = json.dumps([settings, [c.to_dict() for c in cuts]], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Job:
    index: int
    cuts: list
    cfg: AlignConfig
    dir: Path

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return tuple(self.dir / f"ali.{self.index}.{ext}" for ext in ("ark", "scp", "json"))


def run_job(job: Job) -> JobSummary:
    """Decode one job's cuts; decoder/audio errors are recorded per cut, not raised."""
    ark, scp, summary_path = job.paths
    summary = JobSummary(fingerprint(job.cuts, job.cfg))
    aligner = SphinxAligner(job.cfg.pocketsphinx)
    start = time.process_time()

    def labelled():
        for cut in job.cuts:
            try:
                labels = align_cut(aligner, cut, job.cfg, summary)
            except ApmError:
                raise
            except Exception as e:  # any decoder or audio-reading failure of this utterance
                summary.failed[cut.id] = _reason(e)
                log.warning("%s: alignment failed: %s", cut.id, summary.failed[cut.id])
                log.debug("%s: full error", cut.id, exc_info=True)
                labels = None
            if _progress is not None:
                _progress(1)
            if labels is not None:
                yield cut.id, labels

    write_labels(labelled(), ark, scp)
    summary.cpu_seconds = time.process_time() - start
    with atomic_write(summary_path, encoding="utf-8") as f:
        json.dump(asdict(summary), f, indent=1)
    return summary


def _reason(error: Exception, limit: int = 300) -> str:
    """A one-line error summary for logs and the report (lhotse's run to many lines)."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def finished(job: Job) -> JobSummary | None:
    """The job's summary when an earlier run completed it cleanly with the same inputs."""
    ark, scp, summary_path = job.paths
    if not (summary_path.is_file() and scp.is_file() and ark.is_file()):
        return None
    try:
        summary = JobSummary(**json.loads(summary_path.read_text(encoding="utf-8")))
    except (ValueError, TypeError):
        return None
    if summary.failed or summary.fingerprint != fingerprint(job.cuts, job.cfg):
        return None
    return summary


def _init_worker(progress: queue.Queue, log_setup: tuple | None) -> None:
    global _progress
    _progress = progress.put
    if log_setup is not None:  # spawned workers start without the parent's log handlers
        setup_logging(*log_setup)


def decode_cuts(
    cuts: Sequence, cfg: AlignConfig, job_dir: Path, nj: int
) -> tuple[dict[str, np.ndarray], list[JobSummary]]:
    """Align `cuts` in `nj` resumable jobs; returns {cut id: labels} and the job summaries."""
    jobs = [Job(i + 1, part, cfg, job_dir) for i, part in enumerate(split(cuts, nj))]
    summaries: dict[int, JobSummary] = {}
    todo = []
    for job in jobs:
        done = finished(job)
        if done is None:
            todo.append(job)
        else:
            summaries[job.index] = done
    if len(todo) < len(jobs):
        log.info("resuming: %d of %d jobs already finished", len(jobs) - len(todo), len(jobs))
    with progress(total=sum(len(j.cuts) for j in todo), desc="align", unit="utt") as bar:
        if len(todo) == 1 or nj == 1:
            summaries.update(_run_here(todo, bar))
        elif todo:
            summaries.update(_run_parallel(todo, bar))
    labels: dict[str, np.ndarray] = {}
    for job in jobs:
        labels.update({k: np.asarray(v) for k, v in read_labels(job.paths[1]).items()})
    return labels, [summaries[j.index] for j in jobs]


def _run_here(todo: list[Job], bar: LogProgress) -> dict[int, JobSummary]:
    global _progress
    _progress = bar.update
    try:
        return {job.index: run_job(job) for job in todo}
    finally:
        _progress = None


def _run_parallel(todo: list[Job], bar: LogProgress) -> dict[int, JobSummary]:
    # fork where the OS has it: workers start at once with lhotse already imported (spawn
    # re-imports it, seconds per job); the parent holds no decoder, so none is inherited.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    progress = ctx.Queue()
    with ProcessPoolExecutor(
        len(todo),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(progress, None if method == "fork" else (None, log.isEnabledFor(logging.DEBUG))),
    ) as pool:
        futures = {job.index: pool.submit(run_job, job) for job in todo}
        while not all(f.done() for f in futures.values()) or not progress.empty():
            try:
                bar.update(progress.get(timeout=0.2))
            except queue.Empty:
                pass
        return {index: f.result() for index, f in futures.items()}
