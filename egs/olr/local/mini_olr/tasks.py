"""The OLR recipe's sets and test conditions, defined once.

mini-OLR synthesizes these sets; `egs/olr/run.sh` takes its default `--test-sets` and
`--dev-sets` from here; `local/reproduce_tables.sh` passes them (and the conditions the paper's
claims name) to `paper_comparison` (local/paper_comparison). This module imports nothing heavy, so the shell can
ask it cheaply:

  python -m mini_olr.tasks test|dev|conditions
"""

from __future__ import annotations

import sys

TRAIN_SET = "train"
# Dev sets: the full and short conditions on speakers of their own, for every choice that is
# tuned (margins); the test tasks only report.
DEV_SETS = ("dev_full", "dev_short")
TEST_SETS = ("task_full", "task_short", "task_cross", "task_noisy", "task_open")
SCORED_SETS = (*DEV_SETS, *TEST_SETS)  # sets with trials
SETS = (TRAIN_SET, *SCORED_SETS)
# The test condition each test task holds, as the paper's claims name them
# (paper_comparison.plan.CONDITIONS): full length, short (1 s), cross-channel, noisy, open-set.
CONDITIONS = {
    "full": "task_full",
    "short": "task_short",
    "cross": "task_cross",
    "noisy": "task_noisy",
    "open": "task_open",
}

_LISTS = {
    "test": " ".join(TEST_SETS),
    "dev": " ".join(DEV_SETS),
    "conditions": " ".join(f"{c}={t}" for c, t in CONDITIONS.items()),
}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in _LISTS:
        print(f"usage: python -m mini_olr.tasks {'|'.join(_LISTS)}\n{__doc__}", file=sys.stderr)
        return 1
    print(_LISTS[argv[0]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
