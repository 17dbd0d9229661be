"""Bad utterances: collect them, then either stop with one clear error or skip and count them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from apm.utils import ApmError

log = logging.getLogger(__name__)

MAX_LISTED = 10  # problems spelled out in one error message


@dataclass(frozen=True)
class Problem:
    """One bad utterance: what is wrong with it, in which file, and how to fix it."""

    utt: str
    file: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"utterance {self.utt} ({self.file}): {self.what}; {self.fix}"


def settle(problems: list[Problem], skip_bad: bool, where: str) -> set[str]:
    """Raise one ApmError listing `problems`, or (with `skip_bad`) log them and return the
    ids of the utterances to skip. `where` names the data set for the message."""
    if not problems:
        return set()
    if not skip_bad:
        lines = [str(p) for p in problems[:MAX_LISTED]]
        more = len(problems) - len(lines)
        if more:
            lines.append(f"... and {more} more")
        raise ApmError(
            f"{where}: {len(problems)} bad utterance(s):\n  "
            + "\n  ".join(lines)
            + "\nFix them, or rerun with --skip-bad true to leave them out (they are counted)."
        )
    for p in problems:
        log.warning("%s: skipping %s", where, p)
    return {p.utt for p in problems}
