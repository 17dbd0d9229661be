"""Kaldi data directories: read, validate and write `wav.scp`, `utt2spk`, `spk2utt`,
`utt2lang`, optional `segments` and `trials`.

Only text-level checks happen here (ids, cross references, files present on disk); the audio
itself is opened in stage 1 (`apm.data.audio`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from apm.data.problems import Problem, settle
from apm.data.trials import Trial, read_trials, write_trials
from apm.utils import ApmError, atomic_write, write_kv
from apm.utils.io import atomic_dir

REQUIRED = ("wav.scp", "utt2spk", "utt2lang")
TEXT_FILES = ("wav.scp", "utt2spk", "spk2utt", "utt2lang", "segments", "trials")
UNIQUE = "ids must be unique: remove or rename the repeated lines"


@dataclass(frozen=True)
class Segment:
    recording: str
    start: float
    end: float


@dataclass
class KaldiDir:
    """A validated data dir: every utterance has audio, a speaker and a language."""

    path: Path
    wav: dict[str, str]  # recording id -> file path or `command |`
    utt2spk: dict[str, str]
    utt2lang: dict[str, str]
    segments: dict[str, Segment] | None = None
    trials: list[Trial] | None = None
    skipped: list[Problem] = field(default_factory=list)

    @property
    def utterances(self) -> list[str]:
        return sorted(self.utt2lang)

    def recording_of(self, utt: str) -> str:
        return self.segments[utt].recording if self.segments is not None else utt

    @property
    def languages(self) -> list[str]:
        return sorted(set(self.utt2lang.values()))

    @property
    def speakers(self) -> list[str]:
        return sorted(set(self.utt2spk.values()))


def is_pipe(entry: str) -> bool:
    """A Kaldi extended filename `command |` (run by a shell, audio on its stdout)."""
    return entry.rstrip().endswith("|")


def read_map(path: Path) -> tuple[dict[str, str], set[str]]:
    """Read `key value...` lines; return the map and the keys that occur more than once
    (those are dropped from the map: we cannot tell which line is right)."""
    out: dict[str, str] = {}
    dups: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            key, _, value = line.strip().partition(" ")
            if not key:
                continue
            if not value.strip():
                raise ApmError(f"{path}:{lineno}: '{key}' has no value; expected '<id> <value>'")
            if key in out or key in dups:
                dups.add(key)
                out.pop(key, None)
                continue
            out[key] = value.strip()
    return out, dups


def _read_segments(path: Path, problems: list[Problem]) -> tuple[dict[str, Segment], set[str]]:
    raw, dups = read_map(path)
    segments: dict[str, Segment] = {}
    for utt, value in raw.items():
        fields = value.split()
        try:
            seg = Segment(fields[0], float(fields[1]), float(fields[2]))
            if len(fields) != 3 or seg.start < 0 or (seg.end != -1 and seg.end <= seg.start):
                raise ValueError
        except (ValueError, IndexError):
            problems.append(
                Problem(
                    utt,
                    str(path),
                    f"bad segment '{value}'",
                    "expected '<recording> <start> <end>' with start < end",
                )
            )
            continue
        segments[utt] = seg
    return segments, dups


def _resolve_audio(entry: str, bases: list[Path]) -> str | None:
    """Absolute path of a relative file entry (first base where it exists), None if missing.
    Pipe commands are returned unchanged: their paths cannot be rewritten safely."""
    if is_pipe(entry):
        return entry
    if os.path.isabs(entry):
        return entry if os.path.isfile(entry) else None
    for base in bases:
        candidate = (base / entry).resolve()
        if candidate.is_file():
            return str(candidate)
    return None


def read_kaldi_dir(
    path: str | os.PathLike,
    *,
    skip_bad: bool = False,
    audio_bases: list[Path] | None = None,
    train_languages: set[str] | None = None,
) -> KaldiDir:
    """Read and validate a Kaldi data dir.

    Bad utterances (no audio, no speaker, no language, duplicate id, missing audio file,
    spk2utt disagreeing with utt2spk, bad segment) raise one ApmError listing them, or with
    `skip_bad` are dropped and recorded in `KaldiDir.skipped`. Relative audio paths are
    resolved against `audio_bases` (default: the current directory) and made absolute.
    `trials`, when present, must name only known utterances, languages of
    `train_languages` (default: this dir's languages), and agree with utt2lang.
    """
    path = Path(path)
    if not path.is_dir():
        raise ApmError(f"{path}: data directory not found")
    for name in REQUIRED:
        if not (path / name).is_file():
            raise ApmError(f"{path}: missing {name}; a Kaldi data dir needs {', '.join(REQUIRED)}")
    problems: list[Problem] = []
    wav, wav_dups = read_map(path / "wav.scp")
    utt2spk, spk_dups = read_map(path / "utt2spk")
    utt2lang, lang_dups = read_map(path / "utt2lang")
    segments, seg_dups = None, set()
    if (path / "segments").is_file():
        segments, seg_dups = _read_segments(path / "segments", problems)
    utts = set(segments) | seg_dups if segments is not None else set(wav) | wav_dups
    for name, dups in [("utt2spk", spk_dups), ("utt2lang", lang_dups), ("segments", seg_dups)]:
        for utt in sorted(dups):
            problems.append(Problem(utt, str(path / name), "id appears more than once", UNIQUE))
    utts |= spk_dups | lang_dups
    bases = audio_bases or [Path.cwd()]
    resolved = {r: f for r, e in wav.items() if (f := _resolve_audio(e, bases)) is not None}
    spk2utt_speaker = _read_spk2utt(path / "spk2utt") if (path / "spk2utt").is_file() else None
    for utt in sorted(utts):
        problems += _utt_problems(
            utt, path, wav, wav_dups, resolved, utt2spk, utt2lang, segments, spk2utt_speaker, bases
        )
    problems += _orphans(path, utts, utt2spk, utt2lang, segments is not None)
    problems = _unique(problems)
    bad = settle(problems, skip_bad, str(path))
    good = sorted(utts - bad)
    if not good:
        raise ApmError(f"{path}: no usable utterances")
    kd = KaldiDir(
        path=path,
        wav={},
        utt2spk={u: utt2spk[u] for u in good},
        utt2lang={u: utt2lang[u] for u in good},
        segments={u: segments[u] for u in good} if segments is not None else None,
        skipped=[p for p in problems if p.utt in bad],
    )
    kd.wav = {kd.recording_of(u): resolved[kd.recording_of(u)] for u in good}
    if (path / "trials").is_file():
        langs = train_languages if train_languages is not None else set(utt2lang.values())
        kd.trials = _checked_trials(path / "trials", kd, bad, langs)
    return kd


def _orphans(path: Path, utts: set[str], utt2spk, utt2lang, has_segments: bool) -> list[Problem]:
    """Utterances with a speaker or language but no audio."""
    fix = f"add it to {'segments' if has_segments else 'wav.scp'} or remove the line"
    return [
        Problem(utt, str(path / name), "listed here but has no audio", fix)
        for name, mapping in [("utt2spk", utt2spk), ("utt2lang", utt2lang)]
        for utt in sorted(set(mapping) - utts)
    ]


def _unique(problems: list[Problem]) -> list[Problem]:
    """One problem per utterance (the first found) so counts are utterances, not symptoms."""
    seen: set[str] = set()
    out = []
    for p in problems:
        if p.utt not in seen:
            seen.add(p.utt)
            out.append(p)
    return out


def _read_spk2utt(path: Path) -> dict[str, str]:
    """Invert spk2utt to {utt: speaker}."""
    raw, dups = read_map(path)
    if dups:
        raise ApmError(
            f"{path}: speaker(s) {sorted(dups)[:5]} listed twice; regenerate it from utt2spk (utils/utt2spk_to_spk2utt.pl)"
        )
    return {utt: spk for spk, line in raw.items() for utt in line.split()}


def _utt_problems(
    utt, path, wav, wav_dups, resolved, utt2spk, utt2lang, segments, spk2utt_speaker, bases
) -> list[Problem]:
    """Everything wrong with one utterance, most basic first."""
    rec = segments[utt].recording if segments is not None and utt in segments else utt
    wav_scp = str(path / "wav.scp")
    checks = [
        (rec in wav_dups, wav_scp, f"recording id {rec} appears more than once", UNIQUE),
        (rec not in wav and rec not in wav_dups, wav_scp, f"recording {rec} has no audio entry",
         "add it to wav.scp"),
        (rec in wav and rec not in resolved, wav.get(rec, ""),
         "audio file not found (relative paths are looked up under "
         + " or ".join(str(b) for b in bases) + ")", "fix the path in wav.scp"),
        (utt not in utt2spk, str(path / "utt2spk"), "has no speaker",
         "add '<utt> <speaker>' to utt2spk"),
        (utt not in utt2lang, str(path / "utt2lang"), "has no language",
         "add '<utt> <language>' to utt2lang"),
        (spk2utt_speaker is not None and utt in utt2spk
         and spk2utt_speaker.get(utt) != utt2spk[utt], str(path / "spk2utt"),
         "spk2utt disagrees with utt2spk about its speaker",
         "regenerate spk2utt from utt2spk (utils/utt2spk_to_spk2utt.pl)"),
    ]  # fmt: skip
    return [Problem(utt, file, what, fix) for bad, file, what, fix in checks if bad]


def _checked_trials(
    path: Path, kd: KaldiDir, skipped: set[str], languages: set[str]
) -> list[Trial]:
    kept = []
    for t in read_trials(path):
        if t.utt in skipped:
            continue
        if t.utt not in kd.utt2lang:
            raise ApmError(
                f"{path}: trial '{t.lang} {t.utt}' names an utterance that is not in {kd.path}; remove the line or add the utterance"
            )
        if t.lang not in languages:
            raise ApmError(
                f"{path}: trial '{t.lang} {t.utt}' names language {t.lang}, which the training set does not have (it has {' '.join(sorted(languages))})"
            )
        if t.is_target != (kd.utt2lang[t.utt] == t.lang):
            raise ApmError(
                f"{path}: trial '{t.lang} {t.utt}' is labelled {'target' if t.is_target else 'nontarget'} but utt2lang says {kd.utt2lang[t.utt]}; fix the label or utt2lang"
            )
        kept.append(t)
    if not kept:
        raise ApmError(f"{path}: no trials left")
    return kept


def write_kaldi_dir(kd: KaldiDir, out: str | os.PathLike) -> None:
    """Write `kd` to `out` (sorted files, spk2utt regenerated) all at once: the files go to a
    temporary directory that replaces `out` only when complete."""
    with atomic_dir(out) as tmp:
        write_kv(tmp / "wav.scp", kd.wav)
        write_kv(tmp / "utt2spk", kd.utt2spk)
        write_kv(tmp / "utt2lang", kd.utt2lang)
        spk2utt: dict[str, list[str]] = defaultdict(list)
        for utt in sorted(kd.utt2spk):
            spk2utt[kd.utt2spk[utt]].append(utt)
        write_kv(tmp / "spk2utt", {spk: " ".join(u) for spk, u in spk2utt.items()})
        if kd.segments is not None:
            write_kv(
                tmp / "segments",
                {u: f"{s.recording} {s.start:g} {s.end:g}" for u, s in kd.segments.items()},
            )
        if kd.trials is not None:
            write_trials(tmp / "trials", kd.trials)
        if kd.skipped:
            with atomic_write(tmp / "skipped", encoding="utf-8") as f:
                f.writelines(f"{p.utt} {p.what}\n" for p in kd.skipped)
