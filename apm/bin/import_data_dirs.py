"""Validate a corpus given as Kaldi data dirs (<root>/<set>/) and copy each set to <data>/<set>/
(stage 0 of a recipe whose corpus comes that way, e.g. egs/olr with --olr-root)."""

import argparse

from apm.bin.cli import main, str2bool
from apm.data.import_dirs import import_data_dirs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="import_data_dirs", description=__doc__)
    p.add_argument("--skip-bad", type=str2bool, default=False, help="skip and count bad utterances")
    p.add_argument(
        "--scored-sets",
        default=None,
        help="space-separated sets that must have trials (default: every set after the first); "
        "the others, e.g. a back-end training set, may have none",
    )
    p.add_argument("root", help="corpus root holding one Kaldi data dir per set")
    p.add_argument("data", help="output: data/<set>/")
    p.add_argument("sets", nargs="+", help="set names; the first is the training set")
    return p


def run(args: argparse.Namespace) -> None:
    scored = args.scored_sets.split() if args.scored_sets is not None else None
    import_data_dirs(args.root, args.data, args.sets, skip_bad=args.skip_bad, scored_sets=scored)


if __name__ == "__main__":
    main(build_parser(), run)
