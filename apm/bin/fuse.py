"""Stage 7 (before the report): fuse the primary stage 6 scores of several systems with
linear logistic-regression fusion learned on the dev sets (a scale per system, an offset per
language; apm.backend.fusion). Writes exp/<name>/ (languages.txt, scores/<task>.score,
scores/calibrated/<task>.score, fusion.json), which the report treats as one more system."""

from __future__ import annotations

import argparse

from apm.backend.fusion import fuse_systems
from apm.bin.cli import main, str2bool
from apm.utils import ApmError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fuse", description=__doc__)
    p.add_argument("--data", default="data", help="directory of the Kaldi data dirs (utt2lang)")
    p.add_argument("--dev-sets", required=True,
                   help="scored sets (space separated) the fusion weights are learned on")  # fmt: skip
    p.add_argument("--tasks", required=True,
                   help="scored sets (space separated) to write fused scores for")  # fmt: skip
    p.add_argument("--name", default="fusion", help="the fused system's directory under EXP")
    p.add_argument("--skip-bad", type=str2bool, default=False,
                   help="fuse on the utterances every system scored instead of stopping")  # fmt: skip
    p.add_argument("exp", help="directory holding exp/<system>")
    p.add_argument("systems", nargs="+", help="systems to fuse (at least 2)")
    return p


def run(args: argparse.Namespace) -> None:
    tasks = args.tasks.split()
    if not tasks:
        raise ApmError("--tasks is empty; name the sets to fuse")
    fuse_systems(args.exp, args.systems, args.data, args.dev_sets.split(), tasks, args.name,
                 args.skip_bad)  # fmt: skip


if __name__ == "__main__":
    main(build_parser(), run)
