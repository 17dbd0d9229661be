"""Kaldi data directories: read, validate and write `wav.scp`, `utt2spk`, `spk2utt`,
`utt2lang`, optional `segments` and `trials`.

Only text-level checks happen here (ids, cross references, files present on disk); the audio
itself is opened in stage 1 (`apm.data.audio`).
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apm.data.problems import Problem, settle
from apm.data.trials import Trial, read_trials, write_trials
from apm.utils import ApmError, atomic_write, write_kv
from apm.utils.io import atomic_dir, portable_path

REQUIRED = ("wav.scp", "utt2spk", "utt2lang")
TEXT_FILES = ("wav.scp", "utt2spk", "spk2utt", "utt2lang", "segments", "trials")
UNIQUE = "ids must be unique: remove or rename the repeated lines"
MAX_WARNED = 10  # warnings spelled out one by one

log = logging.getLogger(__name__)


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


def read_table(
    path: Path, columns: int | None = 2, form: str = "<id> <value>"
) -> tuple[dict[str, str], set[str], dict[str, int]]:
    """Read a Kaldi text table: whitespace-separated fields (spaces or tabs), one key per line.

    `columns` is the exact number of fields a line must have (key included), or None for
    "key, then the rest of the line" (wav.scp: a path or a `command |`; spk2utt). A line with
    another number of fields is an ApmError naming `path:line` and the expected `form`.
    Returns {key: value} (fields after the key joined by one space, or the rest of the line
    as written), the keys that occur more than once (dropped from the map: we cannot tell
    which line is right) and {key: line number}.
    """
    out: dict[str, str] = {}
    dups: set[str] = set()
    lines: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            key = fields[0]
            if columns is None:
                parts = line.strip().split(maxsplit=1)
                value = parts[1] if len(parts) == 2 else ""
                if not value:
                    raise ApmError(f"{path}:{lineno}: '{key}' has no value; expected '{form}'")
            elif len(fields) != columns:
                raise ApmError(
                    f"{path}:{lineno}: expected {columns} whitespace-separated fields "
                    f"'{form}', found {len(fields)}: '{line.strip()}'; fix or remove the line"
                    + (" (an id or value cannot contain spaces)" if len(fields) > columns else "")
                )
            else:
                value = " ".join(fields[1:])
            if key in out or key in dups:
                dups.add(key)
                out.pop(key, None)
                continue
            out[key] = value
            lines[key] = lineno
    return out, dups, lines


def read_map(path: Path) -> tuple[dict[str, str], set[str]]:
    """`key rest-of-line` table (see `read_table`): the map and the repeated keys."""
    out, dups, _ = read_table(path, None)
    return out, dups


def _read_segments(path: Path, problems: list[Problem]) -> tuple[dict[str, Segment], set[str]]:
    raw, dups, _ = read_table(path, 4, "<utt> <recording> <start> <end>")
    segments: dict[str, Segment] = {}
    for utt, value in raw.items():
        fields = value.split()
        try:
            seg = Segment(fields[0], float(fields[1]), float(fields[2]))
            finite = math.isfinite(seg.start) and math.isfinite(seg.end)
            if not finite or seg.start < 0 or (seg.end != -1 and seg.end <= seg.start):
                raise ValueError
        except ValueError:
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
    """The path to write for a file entry (relative ones: first base where it exists; see
    `portable_path`), None if missing. Pipe commands are returned unchanged: their paths
    cannot be rewritten safely (see `_warn_relative_pipes`)."""
    if is_pipe(entry):
        return entry
    if os.path.isabs(entry):
        return entry if os.path.isfile(entry) else None
    for base in bases:
        candidate = (base / entry).resolve()
        if candidate.is_file():
            return portable_path(candidate)
    return None


def _warn_relative_pipes(
    wav_scp: Path, wav: dict[str, str], lines: dict[str, int], bases: list[Path]
) -> int:
    """Warn about `command |` entries whose arguments look like relative paths of files that
    exist under one of `bases` but not under the current directory, from where the command
    runs (the recipe directory). Returns how many entries were warned about."""
    warned = 0
    cwd = Path.cwd()
    for rec, entry in wav.items():
        if not is_pipe(entry):
            continue
        try:
            words = shlex.split(entry.rstrip()[:-1])
        except ValueError:
            continue
        relative = [
            w
            for w in words[1:]
            if not w.startswith("-")
            and not os.path.isabs(w)
            and not (cwd / w).exists()
            and any((b / w).is_file() for b in bases)
        ]
        if relative:
            warned += 1
            if warned <= MAX_WARNED:
                log.warning(
                    "%s:%d: the command of %s names %s by a relative path; wav.scp commands run "
                    "in the recipe directory (%s), where it does not exist: write it absolute",
                    wav_scp, lines.get(rec, 0), rec, relative[0], cwd,
                )  # fmt: skip
    if warned > MAX_WARNED:
        log.warning("%s: %d commands in all name relative paths", wav_scp, warned)
    return warned


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
    resolved against `audio_bases` (default: the current directory) and written as
    `portable_path` gives them: relative to the current (recipe) directory when under it,
    else absolute.
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
    wav, wav_dups, wav_lines = read_table(
        path / "wav.scp", None, "<recording> <file> or <recording> <command> |"
    )
    utt2spk, spk_dups, _ = read_table(path / "utt2spk", 2, "<utt> <speaker>")
    utt2lang, lang_dups, _ = read_table(path / "utt2lang", 2, "<utt> <language>")
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
    _warn_relative_pipes(path / "wav.scp", wav, wav_lines, bases)
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
        raise ApmError(
            f"{path}: no usable utterance ({len(problems)} bad); a set without utterances "
            "cannot go on, even with --skip-bad true"
        )
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
        # without the training set at hand, the trials' own languages are the targets
        langs = train_languages
        if langs is None:
            langs = {t.lang for t in read_trials(path / "trials")}
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
    # (A second target trial is impossible: trials are unique and agree with utt2lang.)
    targets: dict[str, int] = defaultdict(int)
    for t in kept:
        targets[t.utt] += t.is_target
    for utt in sorted(targets):
        lang = kd.utt2lang[utt]
        if targets[utt] == 0 and lang in languages:
            raise ApmError(
                f"{path}: utterance {utt} (language {lang}) has trials but no target trial; "
                f"add the line '{lang} {utt} target' (only utterances of languages outside "
                "the training set may lack one)"
            )
    return kept


def format_time(seconds: float) -> str:
    """A segment time as written: the shortest decimal that reads back as the same float
    (10003.406 stays 10003.406, 0.5 is 0.5, -1 stays -1), never in exponent notation."""
    return np.format_float_positional(float(seconds), trim="-")


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
                {
                    u: f"{s.recording} {format_time(s.start)} {format_time(s.end)}"
                    for u, s in kd.segments.items()
                },
            )
        if kd.trials is not None:
            write_trials(tmp / "trials", kd.trials)
        if kd.skipped:
            with atomic_write(tmp / "skipped", encoding="utf-8") as f:
                f.writelines(f"{p.utt} {p.what}\n" for p in kd.skipped)
