"""Stage 1: Kaldi data dirs -> lhotse manifests (recordings, supervisions, cuts).

Every recording is opened (in parallel) so bad audio is found here, with the utterance and
the file named. One cut per utterance, with the utterance id as cut id; speed perturbation
adds lhotse's `<utt>_sp0.9` / `<utt>_sp1.1` copies to the cuts of the chosen sets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import logging
import os
import shutil
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lhotse import (
    AudioSource,
    CutSet,
    MonoCut,
    Recording,
    RecordingSet,
    SupervisionSegment,
    SupervisionSet,
)
from lhotse.qa import validate_recordings_and_supervisions

from apm.data.audio import MIN_DURATION, AudioInfo, AudioProblem, probe
from apm.data.kaldi_dir import TEXT_FILES, KaldiDir, format_time, is_pipe, read_kaldi_dir
from apm.data.problems import Problem, settle
from apm.utils import ApmError, atomic_write
from apm.utils.dispatch import split
from apm.utils.done import is_done, mark_done, signature
from apm.utils.io import atomic_dir
from apm.utils.log import progress

log = logging.getLogger(__name__)

SPEED_FACTORS = (0.9, 1.1)
SEGMENT_OVERSHOOT = 0.5  # seconds a segment may end past its recording (truncated, as Kaldi)
DONE = ".done"  # per-set record of the inputs and options that made the manifests
JOBS = ".jobs"  # <out>/.jobs/<set>/probe.<j>.json: what job j of --nj found (removed once merged)


@dataclass
class SetSummary:
    name: str
    utterances: int
    hours: float
    languages: list[str]
    speakers: int
    skipped: int
    perturbed: int = 0

    def line(self) -> str:
        extra = f", +{self.perturbed} speed-perturbed cuts" if self.perturbed else ""
        return (
            f"{self.name}: {self.utterances} utterances, {self.hours:.2f} h, "
            f"{len(self.languages)} languages ({' '.join(self.languages)}), "
            f"{self.speakers} speakers, {self.skipped} skipped{extra}"
        )


def write_manifest(path: str | os.PathLike, items: Iterable) -> None:
    """Write lhotse manifest items as jsonl.gz, byte-for-byte reproducible (no name or mtime in the gzip header)."""
    with (
        atomic_write(path, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
    ):
        for item in items:
            gz.write((json.dumps(item.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))


def _probe_one(entry: str) -> tuple[AudioInfo | None, tuple[str, str] | None]:
    # Exceptions are returned as plain strings: they cross a process boundary.
    try:
        return probe(entry), None
    except AudioProblem as e:
        return None, (e.what, e.fix)


def probe_recordings(wav: dict[str, str], nj: int) -> dict[str, AudioInfo | tuple[str, str]]:
    """Open every recording of `wav` with `nj` processes: {rec: AudioInfo or (what, fix)}."""
    check_nj(nj)
    recs = sorted(wav)
    entries = [wav[r] for r in recs]
    chunksize = max(1, len(recs) // (nj * 20))
    with ProcessPoolExecutor(max_workers=nj) as ex:
        results = list(
            progress(
                ex.map(_probe_one, entries, chunksize=chunksize),
                total=len(recs),
                desc="opening audio",
                unit="rec",
                mininterval=2,
            )
        )
    return {
        r: info if info is not None else err for r, (info, err) in zip(recs, results, strict=True)
    }


def _recording(rec: str, entry: str, info: AudioInfo) -> Recording:
    source = (
        AudioSource(type="command", channels=[0], source=entry.rstrip()[:-1])
        if is_pipe(entry)
        else AudioSource(type="file", channels=[0], source=entry)
    )
    return Recording(
        id=rec,
        sources=[source],
        sampling_rate=info.sampling_rate,
        num_samples=info.num_samples,
        duration=info.duration,
    )


def _span(kd: KaldiDir, utt: str, info: AudioInfo) -> tuple[float, float] | tuple[str, str]:
    """(start, duration) of `utt` in its recording, or (what, fix) when it does not fit.
    A segment ending at most SEGMENT_OVERSHOOT past the recording is cut at its end (the
    caller counts those)."""
    if kd.segments is None:
        return 0.0, info.duration
    seg = kd.segments[utt]
    end = info.duration if seg.end == -1 else seg.end
    if end > info.duration + SEGMENT_OVERSHOOT:
        return (
            f"segment ends at {format_time(end)} s but the recording is {info.duration:.3f} s "
            f"long (more than {SEGMENT_OVERSHOOT} s past its end)",
            "fix its end time in segments",
        )
    end = min(end, info.duration)
    if end - seg.start < MIN_DURATION:
        return "segment is shorter than one 25 ms frame", "remove it from segments"
    return seg.start, end - seg.start


def build_manifests(
    kd: KaldiDir, infos: dict[str, AudioInfo | tuple[str, str]], skip_bad: bool
) -> tuple[RecordingSet, SupervisionSet, CutSet, list[Problem]]:
    """Recordings, supervisions and one cut per utterance; bad audio raises or is skipped."""
    problems, spans, truncated = [], {}, []
    for utt in kd.utterances:
        rec = kd.recording_of(utt)
        got = infos[rec]
        span = _span(kd, utt, got) if isinstance(got, AudioInfo) else got
        if isinstance(span[0], str):
            problems.append(Problem(utt, kd.wav[rec], *span))
        else:
            spans[utt] = span
            seg = kd.segments[utt] if kd.segments is not None else None
            if seg is not None and seg.end != -1 and seg.end > got.duration:
                truncated.append(utt)
    if truncated:
        log.warning(
            "%s: %d segment(s) end up to %g s past their recording and were cut at its end "
            "(as Kaldi does), e.g. %s",
            kd.path, len(truncated), SEGMENT_OVERSHOOT, " ".join(truncated[:5]),
        )  # fmt: skip
    skipped = settle(problems, skip_bad, str(kd.path))
    recordings, supervisions, cuts = {}, [], []
    for utt, (start, duration) in spans.items():
        if utt in skipped:
            continue
        rec = kd.recording_of(utt)
        if rec not in recordings:
            recordings[rec] = _recording(rec, kd.wav[rec], infos[rec])
        sup = SupervisionSegment(
            id=utt,
            recording_id=rec,
            start=start,
            duration=duration,
            channel=0,
            language=kd.utt2lang[utt],
            speaker=kd.utt2spk[utt],
        )
        supervisions.append(sup)
        cuts.append(
            MonoCut(
                id=utt,
                start=start,
                duration=duration,
                channel=0,
                recording=recordings[rec],
                supervisions=[dataclasses.replace(sup, start=0.0)],
            )
        )
    if not cuts:
        raise ApmError(
            f"{kd.path}: no usable utterance left ({len(problems)} bad, see above); "
            "a set without utterances cannot go on, even with --skip-bad true"
        )
    rset = RecordingSet.from_recordings(recordings[r] for r in sorted(recordings))
    sset = SupervisionSet.from_segments(supervisions)
    try:
        validate_recordings_and_supervisions(rset, sset)
    except AssertionError as e:
        raise ApmError(f"{kd.path}: lhotse validation failed: {e}") from e
    return rset, sset, CutSet.from_cuts(cuts), problems


def speed_perturb(cuts: CutSet) -> CutSet:
    """The cuts followed by their 0.9x and 1.1x copies (ids `<utt>_sp0.9`, `<utt>_sp1.1`)."""
    copies = [c.perturb_speed(f) for f in SPEED_FACTORS for c in cuts]
    return CutSet.from_cuts(list(cuts) + copies)


def _set_signature(data_dir: Path, skip_bad: bool, perturb: bool) -> str:
    # the set's Kaldi text files (by name: an absent one is not another one) and the options
    return signature([data_dir / name for name in TEXT_FILES],
                     {"perturb": perturb, "skip_bad": skip_bad,
                      "files": [n for n in TEXT_FILES if (data_dir / n).is_file()]})  # fmt: skip


def _probe_file(out_dir: Path, job: int) -> Path:
    return out_dir.parent / JOBS / out_dir.name / f"probe.{job}.json"


def _job_recordings(kd: KaldiDir, nj: int, job: int) -> list[str]:
    parts = split(sorted(kd.wav), nj)
    return parts[job - 1] if job <= len(parts) else []


def _read_probe_job(path: Path, sig: str, recs: list[str]) -> dict | None:
    """Job results of `path` when made for this signature and these recordings, else None."""
    try:
        got = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if got.get("signature") != sig or got.get("recordings") != recs:
        return None
    return {
        r: AudioInfo(**v) if isinstance(v, dict) else tuple(v)
        for r, v in zip(recs, got["results"], strict=True)
    }


def probe_job(data_dir: Path, out_dir: Path, nj: int, job: int, skip_bad: bool,
              perturb: bool) -> None:  # fmt: skip
    """Job `job` of `nj` (utils/dispatch.sh): open its share of the set's recordings (Kaldi's
    contiguous split of the sorted recording ids) and record what it found for the merging
    run. Kept when already recorded for the same inputs (a rerun redoes failed jobs only);
    a set whose data dir cannot be read is left to the merging run, which reports it."""
    sig = _set_signature(data_dir, skip_bad, perturb)
    if is_done(out_dir / DONE, sig):
        return
    try:
        kd = read_kaldi_dir(data_dir, skip_bad=skip_bad)
    except ApmError as e:
        log.warning("%s: cannot be read (%s); left to the merging run", data_dir, e)
        return
    recs = _job_recordings(kd, nj, job)
    path = _probe_file(out_dir, job)
    if _read_probe_job(path, sig, recs) is not None:
        log.info("%s: job %d of %d already done, kept", data_dir.name, job, nj)
        return
    infos = probe_recordings({r: kd.wav[r] for r in recs}, 1) if recs else {}
    results = [dataclasses.asdict(i) if isinstance(i, AudioInfo) else i for i in infos.values()]
    with atomic_write(path, encoding="utf-8") as f:
        json.dump({"signature": sig, "recordings": recs, "results": results}, f)
    log.info("%s: job %d of %d opened %d recordings", data_dir.name, job, nj, len(recs))


def sets_to_do(data: str | os.PathLike, out: str | os.PathLike, sets: list[str], skip_bad: bool,
               perturb_sets: Iterable[str] = ()) -> list[str]:  # fmt: skip
    """The sets whose manifests are not up to date (what jobs would have to open)."""
    perturb = set(perturb_sets)
    return [
        name for name in sets
        if not is_done(Path(out) / name / DONE,
                       _set_signature(Path(data) / name, skip_bad, name in perturb))
    ]  # fmt: skip


def _jobs_results(kd: KaldiDir, out_dir: Path, sig: str, nj: int) -> dict | None:
    """Every recording's probe result from the `nj` jobs' records, None unless all are there."""
    infos: dict = {}
    for job in range(1, nj + 1):
        got = _read_probe_job(_probe_file(out_dir, job), sig, _job_recordings(kd, nj, job))
        if got is None:
            return None
        infos.update(got)
    return infos


def make_set_manifests(
    data_dir: Path, out_dir: Path, nj: int, skip_bad: bool, perturb: bool
) -> SetSummary | None:
    """Manifests of one set into `out_dir`; None if they are already there for these inputs.
    The audio is opened here unless `nj` jobs (probe_job) already did it."""
    sig = _set_signature(data_dir, skip_bad, perturb)
    if is_done(out_dir / DONE, sig):
        log.info("%s: manifests up to date, skipping", out_dir)
        return None
    kd = read_kaldi_dir(data_dir, skip_bad=skip_bad)
    infos = _jobs_results(kd, out_dir, sig, nj)
    if infos is None:
        infos = probe_recordings(kd.wav, nj)
    else:
        log.info("%s: audio opened by %d jobs", data_dir.name, nj)
    rset, sset, cuts, problems = build_manifests(kd, infos, skip_bad)
    all_cuts = speed_perturb(cuts) if perturb else cuts
    with atomic_dir(out_dir) as tmp:
        write_manifest(tmp / "recordings.jsonl.gz", rset)
        write_manifest(tmp / "supervisions.jsonl.gz", sset)
        write_manifest(tmp / "cuts.jsonl.gz", all_cuts)
        skipped = kd.skipped + problems
        with atomic_write(tmp / "skipped", encoding="utf-8") as f:
            f.writelines(f"{p.utt} {p.what}\n" for p in skipped)
        mark_done(tmp / DONE, sig)
    jobs_dir = _probe_file(out_dir, 1).parent
    if jobs_dir.is_dir():
        shutil.rmtree(jobs_dir)
        with contextlib.suppress(OSError):
            jobs_dir.parent.rmdir()  # .jobs once no set has job records left
    return SetSummary(
        name=data_dir.name,
        utterances=len(cuts),
        hours=sum(c.duration for c in cuts) / 3600,
        languages=sorted({s.language for s in sset}),
        speakers=len({s.speaker for s in sset}),
        skipped=len(skipped),
        perturbed=len(all_cuts) - len(cuts),
    )


def make_manifests(
    data: str | os.PathLike,
    out: str | os.PathLike,
    sets: list[str],
    *,
    nj: int = 1,
    skip_bad: bool = False,
    perturb_sets: Iterable[str] = (),
    job: int | None = None,
) -> list[SetSummary]:
    """Stage 1 for `sets` under `data` -> `out/<set>/`; logs and returns a summary per set
    that was (re)made. With `job` J: only job J of `nj` (probe_job) for every set; the run
    without `job` then merges the jobs' results (same outputs as opening the audio itself).

    Every set is checked even when an earlier one fails, so one run reports the problems of
    all sets together (one ApmError at the end); the sets that passed are written."""
    check_nj(nj)
    data, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    perturb_sets = set(perturb_sets)
    if job is not None:
        if not 1 <= job <= nj:
            raise ApmError(f"--job {job}: expected a job number from 1 to --nj {nj}")
        for name in sets:
            probe_job(data / name, out / name, nj, job, skip_bad, name in perturb_sets)
        return []
    summaries, failures = [], []
    for name in sets:
        try:
            summary = make_set_manifests(
                data / name, out / name, nj, skip_bad, name in perturb_sets
            )
        except ApmError as e:
            log.warning("set %s has problems (listed at the end); checking the others", name)
            failures.append((name, str(e)))
            continue
        if summary is not None:
            log.info("%s", summary.line())
            summaries.append(summary)
    if len(failures) == 1:
        raise ApmError(failures[0][1])
    if failures:
        raise ApmError(
            f"{len(failures)} of {len(sets)} sets have problems "
            f"({' '.join(n for n, _ in failures)}):\n"
            + "\n".join(f"[{n}] {msg}" for n, msg in failures)
        )
    return summaries


def check_nj(nj: int) -> None:
    """Refuse a job count below 1 (the CLIs' --nj)."""
    if not isinstance(nj, int) or nj < 1:
        raise ApmError(f"--nj {nj}: the number of parallel jobs must be at least 1")
