"""Stage 2: fbank + energy VAD of every cut: a lilcom-compressed lhotse store plus Kaldi
vad.scp, and with --kaldi-copy true a Kaldi feats.scp copy of the features."""

import argparse
import sys
from pathlib import Path

from apm.bin.cli import main, str2bool
from apm.features.fbank import load_feature_config
from apm.features.pipeline import make_fbank, prepare_sets
from apm.utils.defaults import NJ
from apm.utils.dispatch import JOB_OPTIONS, add_job_options, run_jobs, without_options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_fbank", description=__doc__)
    p.add_argument("--nj", type=int, default=NJ, help="parallel jobs (default: %(default)s)")
    p.add_argument("--config", default=None, help="feature config YAML (conf/fbank.yaml)")
    p.add_argument("--skip-bad", type=str2bool, default=False, help="skip and count bad audio")
    p.add_argument(
        "--kaldi-copy", type=str2bool, default=False,
        help="also write feats.scp/ark (float32, for Kaldi tools); added to a finished set "
        "without recomputing",
    )  # fmt: skip
    p.add_argument(
        "--job", type=int, default=None,
        help="only dispatcher job J of --nj (utils/dispatch.sh JOB=1:N): feature jobs J, J+N, "
        "... (make_fbank --cmd starts them after preparing the sets, then merges)",
    )  # fmt: skip
    add_job_options(p, "fbank")
    p.add_argument("manifests", help="directory with <set>/cuts.jsonl.gz (stage 1)")
    p.add_argument("out", help="output: <out>/<set>/")
    p.add_argument("sets", nargs="+")
    return p


def run(args: argparse.Namespace) -> None:
    cfg = load_feature_config(args.config)
    if args.cmd and args.job is None and prepare_sets(args.manifests, args.out, args.sets, cfg,
                                                      args.skip_bad):  # fmt: skip
        log_dir = args.log_dir or str(Path(args.out) / "log")
        run_jobs(args.cmd, args.nj, f"{log_dir}/fbank.JOB.log", "apm.bin.make_fbank",
                 without_options(sys.argv[1:], JOB_OPTIONS),
                 job=lambda j: run(argparse.Namespace(**{**vars(args), "job": j})))  # fmt: skip
    make_fbank(
        args.manifests,
        args.out,
        args.sets,
        cfg,
        nj=args.nj,
        skip_bad=args.skip_bad,
        kaldi_copy=args.kaldi_copy,
        job=args.job,
    )


if __name__ == "__main__":
    main(build_parser(), run)
