"""Stage 0 with --olr-root: validate a real OLR release (Kaldi data dirs) and copy it to data/."""

import argparse

from apm.bin.cli import main, str2bool
from apm.data.olr import import_olr


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="import_olr", description=__doc__)
    p.add_argument("--skip-bad", type=str2bool, default=False, help="skip and count bad utterances")
    p.add_argument(
        "--scored-sets",
        default=None,
        help="space-separated sets that must have trials (default: every set after the first); "
        "the others, e.g. a back-end training set, may have none",
    )
    p.add_argument("olr_root", help="release root holding one Kaldi data dir per set")
    p.add_argument("data", help="output: data/<set>/")
    p.add_argument("sets", nargs="+", help="set names; the first is the training set")
    return p


def run(args: argparse.Namespace) -> None:
    scored = args.scored_sets.split() if args.scored_sets is not None else None
    import_olr(args.olr_root, args.data, args.sets, skip_bad=args.skip_bad, scored_sets=scored)


if __name__ == "__main__":
    main(build_parser(), run)
