"""Write the self-contained model package of a trained, scored system (exp/<system>/model/):
network weights, the back-end stage 6 fitted and saved (exp/<system>/backend/, copied, with
its calibration), languages.txt, feature/VAD/CMN settings, package.json and a model card
(MODEL.md: the --data-card text first). Nothing in it is pickled."""

from __future__ import annotations

import argparse
import shlex
import sys

from apm.bin.cli import main
from apm.features.fbank import load_feature_config
from apm.infer.package import write_package
from apm.utils import ApmError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="package_model", description=__doc__)
    p.add_argument("--data", default="data", help="directory of the Kaldi data dirs")
    p.add_argument(
        "--fbank-conf", default=None, help="the stage 2 feature config (conf/fbank.yaml)"
    )
    p.add_argument("--data-card", default=None,
                   help="markdown file describing the training corpus (what speech, how made, "
                   "what is out of domain): the first section of MODEL.md")  # fmt: skip
    p.add_argument("--unknown-threshold", type=float, default=None,
                   help="default posterior below which identify answers 'unknown' (0: never; "
                   "default: chosen on --dev-sets, else 0)")  # fmt: skip
    p.add_argument("--dev-sets", default="",
                   help="scored dev sets (stage 6) on which to choose the unknown threshold; "
                   "the open-set ones (languages outside languages.txt) when there are any, "
                   "else the package records that it was never checked on unknown "
                   "languages")  # fmt: skip
    p.add_argument("--output", default=None, help="package directory (default: <system_dir>/model)")
    p.add_argument("system_dir", help="exp/<system>")
    return p


def run(args: argparse.Namespace) -> None:
    if args.unknown_threshold is not None and not 0.0 <= args.unknown_threshold <= 1.0:
        raise ApmError(f"--unknown-threshold must lie in [0, 1], got {args.unknown_threshold}")
    write_package(args.system_dir, args.data, args.output, load_feature_config(args.fbank_conf),
                  args.unknown_threshold,
                  "python -m apm.bin.package_model " + shlex.join(sys.argv[1:]),
                  tuple(args.dev_sets.split()), args.data_card)  # fmt: skip


if __name__ == "__main__":
    main(build_parser(), run)
