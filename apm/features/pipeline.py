"""Stage 2: fbank + VAD for every cut of a set, in resumable jobs.

Layout of `<out>/<set>/`:
  cuts.jsonl.gz        the cuts with lhotse features in the lilcom store below
  storage/feats.j.lca  per job j: lhotse `LilcomChunkyWriter` archive (lilcom-compressed
                       fbank, random access per cut and frame range), the one feature copy
  vad.scp              Kaldi table (float32 0/1 per frame)
  feature_config.yaml  the feature config used (on-the-fly augmentation recomputes fbank with it)
  feats.scp            only with `kaldi_copy`: Kaldi table of the store's decoded fbank
  jobs/                per job j: vad.j.ark/scp, cuts.j.jsonl.gz, stats.j.json (+ feats.j.ark/scp)
  skipped              `<utt> <reason>` of bad utterances left out (--skip-bad true)

The cuts are cut into fixed-size jobs (`cuts_per_job`, independent of --nj, so any rerun
splits alike). A job's files are written under temporary names and renamed, its cuts file
last: a job whose cuts file exists is finished and is not redone. A killed run, rerun,
therefore gives the same bytes as an uninterrupted one.

lilcom is lossy: values are rounded to multiples of 2^-5 (`fbank.STORE_TICK_POWER`), so a decoded log mel
energy is within 2^-6 of the float32 fbank (measured: local/bench_feature_store.py). The
Kaldi copy is written from the store, so it equals what `cut.load_features()` gives; it can
be added to a finished set later (rerun with --kaldi-copy true: no fbank is recomputed).

Paths inside feats.scp, vad.scp and the cuts' feature storage are relative to the current
directory (the recipe directory: run.sh runs every stage there) when `<out>` lies under it,
absolute otherwise (`apm.utils.io.portable_path`); readers open them from there.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from lhotse import CutSet
from lhotse.features.io import LilcomChunkyWriter
from lhotse.utils import fastcopy

from apm.data.manifests import check_nj, write_manifest
from apm.features.fbank import (
    STORE_TICK_POWER,
    STORED_CONFIG,
    FeatureConfig,
    fbank_and_vad,
    features_manifest,
    make_extractor,
)
from apm.utils import ApmError, atomic_path, atomic_write
from apm.utils.arkio import write_ark_scp
from apm.utils.done import is_done, mark_done, signature
from apm.utils.io import portable_path
from apm.utils.log import progress

log = logging.getLogger(__name__)

CRASH_ENV = "APM_FBANK_CRASH_AFTER_JOBS"  # test hook: SIGKILL stage 2 after N finished jobs
DONE = ".done"
CONFIG = ".config"
STORAGE = "storage"


@dataclass(frozen=True)
class Job:
    index: int  # 1-based, as Kaldi numbers jobs
    cuts: list
    set_dir: str
    config: FeatureConfig
    skip_bad: bool


@dataclass
class FbankSummary:
    name: str
    cuts: int
    hours: float
    frames: int
    speech_frames: int
    skipped: int
    wall: float

    def line(self) -> str:
        speech = 100 * self.speech_frames / max(self.frames, 1)
        return (
            f"{self.name}: {self.cuts} cuts, {self.hours:.2f} h, {self.frames} frames "
            f"({speech:.1f}% speech by VAD), {self.skipped} skipped, {self.wall:.1f} s"
        )


def _die_with_parent() -> None:
    """Worker initializer: one torch thread per job, and exit when the parent dies so a
    killed stage leaves no stray workers (Linux prctl PR_SET_PDEATHSIG)."""
    torch.set_num_threads(1)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        log.debug("prctl unavailable: workers may outlive a killed parent")


def _load_audio(cut, skip_bad: bool) -> tuple[np.ndarray | None, str]:
    """(samples, ""), or for unloadable audio (None, reason) with `skip_bad`, else ApmError."""
    try:
        return cut.load_audio()[0], ""
    except Exception as e:  # any decoder/pipe failure: lhotse raises many types
        source = cut.recording.sources[0].source
        # lhotse's message lists every backend tried; its first line says what failed.
        first = (str(e).splitlines() or [""])[0][:300]
        what = f"cannot load audio ({type(e).__name__}: {first})"
        if not skip_bad:
            raise ApmError(
                f"utterance {cut.id} ({source}): {what}; fix or remove it, or rerun with "
                "--skip-bad true"
            ) from None
        log.warning("skipping utterance %s (%s): %s", cut.id, source, what)
        return None, what


@contextlib.contextmanager
def _lilcom_archive(path: Path) -> Iterator[LilcomChunkyWriter]:
    """lhotse's LilcomChunkyWriter onto `path` (`*.lca`), atomically: it writes
    `.<stem>.tmp.lca` (the writer insists on the suffix), renamed onto `path` on success."""
    tmp = path.with_name(f".{path.stem}.tmp.lca")
    try:
        with LilcomChunkyWriter(tmp, tick_power=STORE_TICK_POWER) as writer:
            yield writer
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run_job(job: Job) -> dict:
    """Features of one job's cuts; returns its stats (also written to jobs/stats.j.json).
    On error its archive is not left behind."""
    set_dir, j = Path(job.set_dir), job.index
    jobs = set_dir / "jobs"
    extractor = make_extractor(job.config)
    archive = set_dir / STORAGE / f"feats.{j}.lca"
    vads, cuts, skipped = {}, [], []
    with _lilcom_archive(archive) as writer:
        for cut in job.cuts:
            audio, why = _load_audio(cut, job.skip_bad)
            if audio is None:
                skipped.append(f"{cut.id} {why}")
                continue
            f, v = fbank_and_vad(audio, cut.sampling_rate, extractor, job.config.vad, cut.id)
            # lilcom rounds `f` in place: only its shape is used after this. The manifest
            # names the archive's final name, not the writer's temporary one.
            key = writer.write(cut.id, f)
            manifest = features_manifest(cut, f, writer.name, str(archive), key)
            cuts.append(fastcopy(cut, features=manifest))
            vads[cut.id] = v
    write_ark_scp(vads.items(), jobs / f"vad.{j}.ark")
    stats = {
        "cuts": len(cuts),
        "seconds": sum(c.duration for c in cuts),
        "frames": int(sum(len(v) for v in vads.values())),
        "speech_frames": int(sum(v.sum() for v in vads.values())),
        "skipped": skipped,
    }
    with atomic_write(jobs / f"stats.{j}.json", encoding="utf-8") as f:
        json.dump(stats, f, sort_keys=True)
    write_manifest(jobs / f"cuts.{j}.jsonl.gz", cuts)  # last: marks the job finished
    return stats


def _signature(cuts_path: Path, cfg: FeatureConfig) -> str:
    # The storage format too: a set written in another layout (before the lilcom store:
    # numpy files + a Kaldi copy) is recomputed, not taken as finished.
    store = {"writer": LilcomChunkyWriter.name, "tick_power": STORE_TICK_POWER}
    return signature([cuts_path], {"features": cfg.to_dict(), "store": store})


def _prepare(set_dir: Path, sig: str) -> bool:
    """True if the set is finished for `sig`; else make sure the directory holds only
    work done for the same inputs and config (anything else is removed)."""
    # Two records of the same signature: CONFIG says which inputs the finished jobs there
    # belong to (they are kept), DONE that the whole set is finished.
    config = set_dir / CONFIG
    if is_done(config, sig):
        stale = [*(set_dir / "jobs").glob(".*.tmp"), *(set_dir / STORAGE).glob(".*.tmp.lca")]
        for path in stale:  # left by a killed run
            path.unlink()
        return is_done(set_dir / DONE, sig)
    if set_dir.exists():
        log.info("%s: inputs or config changed, recomputing the set", set_dir)
        shutil.rmtree(set_dir)
    (set_dir / "jobs").mkdir(parents=True)
    (set_dir / STORAGE).mkdir()
    mark_done(config, sig)
    return False


def _run_jobs(todo: list[Job], nj: int, total: int, done: int) -> None:
    """Run `todo` on `nj` processes, at most `nj` jobs in flight, with a progress bar over
    cuts; the first error stops the rest. Test hook: with APM_FBANK_CRASH_AFTER_JOBS=N in the
    environment this process SIGKILLs itself (and so its workers) after N finished jobs."""
    crash_after = int(os.environ.get(CRASH_ENV, "0"))
    queue = list(reversed(todo))
    finished = 0
    with (
        progress(total=total, initial=done, desc="fbank", unit="cut", mininterval=2) as bar,
        ProcessPoolExecutor(max_workers=nj, initializer=_die_with_parent) as ex,
    ):
        running = {}
        while queue or running:
            while queue and len(running) < nj:
                job = queue.pop()
                running[ex.submit(run_job, job)] = job
            completed, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in completed:
                job = running.pop(fut)
                if fut.exception() is not None:
                    ex.shutdown(cancel_futures=True)
                    raise fut.exception()
                bar.update(len(job.cuts))
                finished += 1
                if crash_after and finished >= crash_after:
                    os.kill(os.getpid(), signal.SIGKILL)


def _concat_scp(set_dir: Path, stem: str, n_jobs: int) -> None:
    """`<stem>.scp` of the set: the jobs' `jobs/<stem>.j.scp` in job order."""
    with atomic_write(set_dir / f"{stem}.scp", encoding="utf-8") as f:
        for j in range(1, n_jobs + 1):
            f.write((set_dir / "jobs" / f"{stem}.{j}.scp").read_text(encoding="utf-8"))


def _merge(set_dir: Path, n_jobs: int) -> dict:
    """Join the jobs' vad scp, cuts and stats into the set's files; return the summed stats."""
    jobs = set_dir / "jobs"
    totals = {"cuts": 0, "seconds": 0.0, "frames": 0, "speech_frames": 0, "skipped": []}
    _concat_scp(set_dir, "vad", n_jobs)
    with atomic_path(set_dir / "cuts.jsonl.gz") as tmp:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as out,
        ):
            for j in range(1, n_jobs + 1):
                with gzip.open(jobs / f"cuts.{j}.jsonl.gz", "rb") as part:
                    shutil.copyfileobj(part, out)
    for j in range(1, n_jobs + 1):
        stats = json.loads((jobs / f"stats.{j}.json").read_text())
        for key in totals:
            totals[key] += stats[key]
    with atomic_write(set_dir / "skipped", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in totals["skipped"])
    return totals


def write_kaldi_copy(set_dir: Path, n_jobs: int) -> None:
    """feats.scp (+ jobs/feats.j.ark/scp): the store's decoded fbank as a Kaldi table, per
    job (a job whose ark exists is done; its scp is renamed before it), feats.scp last."""
    jobs = set_dir / "jobs"
    for j in range(1, n_jobs + 1):
        ark = jobs / f"feats.{j}.ark"
        if not ark.is_file():
            cuts = CutSet.from_file(jobs / f"cuts.{j}.jsonl.gz")
            write_ark_scp(((cut.id, cut.load_features()) for cut in cuts), ark)
    _concat_scp(set_dir, "feats", n_jobs)


def _jobs(
    cuts_path: Path, set_dir: Path, cfg: FeatureConfig, skip_bad: bool
) -> tuple[list, list[Job], list[Job]]:
    """(the set's cuts, its jobs, those not finished yet)."""
    where = Path(portable_path(set_dir))
    cuts = list(CutSet.from_file(cuts_path))
    size = cfg.cuts_per_job
    jobs = [
        Job(i + 1, cuts[k : k + size], str(where), cfg, skip_bad)
        for i, k in enumerate(range(0, len(cuts), size))
    ]
    todo = [job for job in jobs if not (set_dir / "jobs" / f"cuts.{job.index}.jsonl.gz").is_file()]
    return cuts, jobs, todo


def _log_resuming(set_dir: Path, jobs: list[Job], todo: list[Job]) -> None:
    log.info("%s: resuming, %d of %d jobs already done", set_dir, len(jobs) - len(todo), len(jobs))


def _input_cuts(cuts_path: Path) -> None:
    if not cuts_path.is_file():
        raise ApmError(f"{cuts_path}: not found; run stage 1 (manifests) first")


def prepare_sets(
    manifests: str | os.PathLike, out: str | os.PathLike, sets: list[str], cfg: FeatureConfig,
    skip_bad: bool,
) -> int:  # fmt: skip
    """Before jobs run on their own (run_set_jobs): make each set's directory hold only work
    done for these inputs and config, and say how much of it is done; returns the number of
    feature jobs left to run."""
    left = 0
    for name in sets:
        cuts_path, set_dir = Path(manifests) / name / "cuts.jsonl.gz", Path(out) / name
        _input_cuts(cuts_path)
        if _prepare(set_dir, _signature(cuts_path, cfg)):
            continue
        _, jobs, todo = _jobs(cuts_path, set_dir, cfg, skip_bad)
        if len(todo) < len(jobs):
            _log_resuming(set_dir, jobs, todo)
        left += len(todo)
    return left


def run_set_jobs(
    cuts_path: Path, set_dir: Path, cfg: FeatureConfig, skip_bad: bool, nj: int, job: int
) -> None:
    """Dispatcher job `job` of `nj` (utils/dispatch.sh): the set's unfinished feature jobs
    job, job + nj, job + 2 nj, ... in this process (one worker). The set must be prepared
    (prepare_set); the run without a job number merges."""
    _input_cuts(cuts_path)
    sig = _signature(cuts_path, cfg)
    if is_done(set_dir / DONE, sig):
        return
    if not is_done(set_dir / CONFIG, sig):
        raise ApmError(
            f"{set_dir}: not prepared for these inputs and config; dispatcher jobs (--job) are "
            "started by make_fbank --cmd, which prepares the sets first"
        )
    _, _, todo = _jobs(cuts_path, set_dir, cfg, skip_bad)
    mine = [j for j in todo if (j.index - 1) % nj == job - 1]
    log.info("%s: %d feature jobs for dispatcher job %d of %d", set_dir, len(mine), job, nj)
    _run_jobs(mine, 1, sum(len(j.cuts) for j in mine), 0)


def make_set_fbank(
    cuts_path: Path, set_dir: Path, cfg: FeatureConfig, nj: int, skip_bad: bool,
    kaldi_copy: bool = False,
) -> FbankSummary | None:  # fmt: skip
    """Stage 2 for one set; None when it was already finished for these inputs and config
    (then only a missing Kaldi copy that `kaldi_copy` asks for is written)."""
    _input_cuts(cuts_path)
    # Relative to the recipe directory when under it: paths written inside files use it.
    where = Path(portable_path(set_dir))
    sig = _signature(cuts_path, cfg)
    if _prepare(set_dir, sig):
        if kaldi_copy and not (set_dir / "feats.scp").is_file():
            log.info("%s: features up to date; writing their Kaldi copy (feats.scp)", set_dir)
            write_kaldi_copy(where, len(list((set_dir / "jobs").glob("cuts.*.jsonl.gz"))))
        else:
            log.info("%s: features up to date, skipping", set_dir)
        return None
    start = time.time()
    cuts, jobs, todo = _jobs(cuts_path, set_dir, cfg, skip_bad)
    if todo and len(todo) < len(jobs):
        _log_resuming(set_dir, jobs, todo)
    _run_jobs(todo, nj, len(cuts), len(cuts) - sum(len(j.cuts) for j in todo))
    totals = _merge(set_dir, len(jobs))
    if totals["cuts"] == 0:
        raise ApmError(
            f"{set_dir}: every utterance was skipped (see {set_dir / 'skipped'}); a set "
            "without features cannot go on, even with --skip-bad true"
        )
    if kaldi_copy:
        write_kaldi_copy(where, len(jobs))
    with atomic_write(set_dir / STORED_CONFIG, encoding="utf-8") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=True)
    mark_done(set_dir / DONE, sig)
    return FbankSummary(
        name=set_dir.name,
        cuts=totals["cuts"],
        hours=totals["seconds"] / 3600,
        frames=totals["frames"],
        speech_frames=totals["speech_frames"],
        skipped=len(totals["skipped"]),
        wall=time.time() - start,
    )


def make_fbank(
    manifests: str | os.PathLike,
    out: str | os.PathLike,
    sets: list[str],
    cfg: FeatureConfig,
    *,
    nj: int = 1,
    skip_bad: bool = False,
    kaldi_copy: bool = False,
    job: int | None = None,
) -> list[FbankSummary]:
    """Stage 2: `<manifests>/<set>/cuts.jsonl.gz` -> `<out>/<set>/` for each set; with
    `kaldi_copy` also a Kaldi feats.scp of each set's features.

    Split over dispatcher jobs (make_fbank --cmd): prepare_sets first, then `job` J = 1..nj
    (run_set_jobs, in any order or place), then this without `job` to merge (and do what
    the jobs left)."""
    check_nj(nj)
    if job is not None:
        if not 1 <= job <= nj:
            raise ApmError(f"--job {job}: expected a job number from 1 to --nj {nj}")
        for name in sets:
            cuts_path, set_dir = Path(manifests) / name / "cuts.jsonl.gz", Path(out) / name
            run_set_jobs(cuts_path, set_dir, cfg, skip_bad, nj, job)
        return []
    summaries = []
    for name in sets:
        summary = make_set_fbank(
            Path(manifests) / name / "cuts.jsonl.gz",
            Path(out) / name,
            cfg,
            nj,
            skip_bad,
            kaldi_copy,
        )
        if summary is not None:
            log.info("%s", summary.line())
            summaries.append(summary)
    return summaries
