"""Stage 1: Kaldi data dirs -> lhotse manifests, audio checked, optional speed perturbation."""

import argparse

from apm.bin.cli import main, str2bool
from apm.data.manifests import make_manifests
from apm.utils.defaults import NJ


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_manifests", description=__doc__)
    p.add_argument(
        "--nj", type=int, default=NJ, help="parallel processes opening audio (default: %(default)s)"
    )
    p.add_argument("--skip-bad", type=str2bool, default=False, help="skip and count bad utterances")
    p.add_argument("--speed-perturb", type=str2bool, default=False, help="add 0.9/1.1 copies")
    p.add_argument("--perturb-sets", default="", help="sets to perturb (space separated)")
    p.add_argument("data", help="directory with one Kaldi data dir per set")
    p.add_argument("out", help="output: <out>/<set>/{recordings,supervisions,cuts}.jsonl.gz")
    p.add_argument("sets", nargs="+")
    return p


def run(args: argparse.Namespace) -> None:
    perturb = args.perturb_sets.split() if args.speed_perturb else []
    make_manifests(
        args.data, args.out, args.sets, nj=args.nj, skip_bad=args.skip_bad, perturb_sets=perturb
    )


if __name__ == "__main__":
    main(build_parser(), run)
