"""A system's class order: `exp/<system>/languages.txt`, one language code per line."""

from __future__ import annotations

import os
from pathlib import Path

from apm.utils import ApmError


def read_languages(system_dir: str | os.PathLike) -> list[str]:
    """The training languages of a system, in the order of its classifier outputs."""
    path = Path(system_dir) / "languages.txt"
    if not path.is_file():
        raise ApmError(f"{path}: not found; train the system first (stage 4)")
    langs = path.read_text(encoding="utf-8").split()
    if len(langs) < 2 or len(set(langs)) != len(langs):
        raise ApmError(f"{path}: expected at least 2 distinct languages, got {langs}")
    return langs
