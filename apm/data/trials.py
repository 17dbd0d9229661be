"""OLR trials/keys: `<lang> <utt> target|nontarget` per line."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from apm.utils.errors import ApmError
from apm.utils.io import atomic_write

LABELS = {"target": True, "nontarget": False}


class Trial(NamedTuple):
    lang: str
    utt: str
    is_target: bool


def read_trials(path: str | os.PathLike) -> list[Trial]:
    """Read an OLR trials file; malformed lines and repeated (lang, utt) pairs are errors."""
    path = Path(path)
    if not path.is_file():
        raise ApmError(f"{path}: trials file not found")
    trials: list[Trial] = []
    seen: set[tuple[str, str]] = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3 or fields[2] not in LABELS:
                raise ApmError(
                    f"{path}:{lineno}: expected 3 whitespace-separated fields "
                    f"'<lang> <utt> target|nontarget', got '{line.strip()}'; fix or remove the line"
                )
            lang, utt, label = fields
            if (lang, utt) in seen:
                raise ApmError(
                    f"{path}:{lineno}: trial ({lang}, {utt}) appears twice; remove one line"
                )
            seen.add((lang, utt))
            trials.append(Trial(lang, utt, LABELS[label]))
    if not trials:
        raise ApmError(f"{path}: no trials")
    return trials


def write_trials(path: str | os.PathLike, trials: list[Trial]) -> None:
    with atomic_write(path, encoding="utf-8") as f:
        for t in trials:
            f.write(f"{t.lang} {t.utt} {'target' if t.is_target else 'nontarget'}\n")


def all_vs_all_trials(utt2lang: Mapping[str, str], languages: Iterable[str]) -> list[Trial]:
    """OLR trials for a corpus that has none: every utterance against every language of
    `languages` (the training languages), target where it is the utterance's own language.

    Utterances of other languages (open-set) get only non-target trials. Sorted by utterance,
    then language, so the file is the same whatever order the input came in.
    """
    targets = sorted(set(languages))
    if len(targets) < 2:
        raise ApmError(f"trials need at least 2 target languages, got {targets}")
    if not utt2lang:
        raise ApmError("trials need at least one utterance, got none")
    return [Trial(lang, utt, utt2lang[utt] == lang) for utt in sorted(utt2lang) for lang in targets]
