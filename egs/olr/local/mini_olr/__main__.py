"""Synthesize the mini-OLR corpus with eSpeak NG (stage 0 of egs/olr without --olr-root)."""

from __future__ import annotations

import argparse

from apm.bin.cli import main
from apm.utils.defaults import NJ
from mini_olr.build import make_mini_olr
from mini_olr.spec import SIZES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mini_olr", description=__doc__)
    p.add_argument("data", help="output data directory (Kaldi dirs data/<set>/ are written there)")
    p.add_argument("--size", default="mini", choices=sorted(SIZES), help="corpus size")
    p.add_argument(
        "--nj", type=int, default=NJ, help="parallel synthesis processes (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=777, help="random seed (same seed: same bytes)")
    p.add_argument(
        "--languages",
        default="",
        help="target OLR codes, space separated (CODE=VOICE for others); empty: the size's",
    )
    p.add_argument(
        "--unknown-languages",
        default=None,
        help="open-set unknown language codes (CODE=VOICE for others); unset: the size's",
    )
    return p


def run(args: argparse.Namespace) -> None:
    make_mini_olr(
        args.data,
        size_name=args.size,
        seed=args.seed,
        nj=args.nj,
        languages=args.languages.split() or None,
        unknowns=None if args.unknown_languages is None else args.unknown_languages.split(),
    )


if __name__ == "__main__":
    main(build_parser(), run)
