"""Stage 1: Kaldi data dirs -> lhotse manifests, audio checked, optional speed perturbation."""

import argparse
import sys
from pathlib import Path

from apm.bin.cli import main, str2bool
from apm.data.manifests import make_manifests, sets_to_do
from apm.utils.defaults import NJ
from apm.utils.dispatch import JOB_OPTIONS, add_job_options, run_jobs, without_options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_manifests", description=__doc__)
    p.add_argument(
        "--nj", type=int, default=NJ, help="parallel processes opening audio (default: %(default)s)"
    )
    p.add_argument("--skip-bad", type=str2bool, default=False, help="skip and count bad utterances")
    p.add_argument("--speed-perturb", type=str2bool, default=False, help="add 0.9/1.1 copies")
    p.add_argument("--perturb-sets", default="", help="sets to perturb (space separated)")
    p.add_argument(
        "--job", type=int, default=None,
        help="only job J of --nj (utils/dispatch.sh JOB=1:N): open that share of the audio; "
        "the run without --job then merges the jobs' results",
    )  # fmt: skip
    add_job_options(p, "manifests")
    p.add_argument("data", help="directory with one Kaldi data dir per set")
    p.add_argument("out", help="output: <out>/<set>/{recordings,supervisions,cuts}.jsonl.gz")
    p.add_argument("sets", nargs="+")
    return p


def run(args: argparse.Namespace) -> None:
    perturb = args.perturb_sets.split() if args.speed_perturb else []
    if (
        args.cmd
        and args.job is None
        and sets_to_do(args.data, args.out, args.sets, args.skip_bad, perturb)
    ):
        log_dir = args.log_dir or str(Path(args.out) / "log")
        run_jobs(args.cmd, args.nj, f"{log_dir}/manifests.JOB.log", "apm.bin.make_manifests",
                 without_options(sys.argv[1:], JOB_OPTIONS),
                 job=lambda j: run(argparse.Namespace(**{**vars(args), "job": j})))  # fmt: skip
    make_manifests(
        args.data,
        args.out,
        args.sets,
        nj=args.nj,
        skip_bad=args.skip_bad,
        perturb_sets=perturb,
        job=args.job,
    )


if __name__ == "__main__":
    main(build_parser(), run)
