"""Frame-level phone labels for a feature directory (stage 3).

python -m apm.bin.align_phones [--nj N] [--config align.yaml] [--ali-from SOURCE]
    [--oracle-dir DIR] [--skip-bad true|false] <fbank-dir> <ali-dir>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from apm.align.config import load_align_config
from apm.align.pipeline import align_phones, decode_job, decode_jobs_left
from apm.bin.cli import main, str2bool
from apm.utils.defaults import NJ
from apm.utils.dispatch import JOB_OPTIONS, add_job_options, run_jobs, without_options
from apm.utils.errors import ApmError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="align_phones",
        description="Write <ali-dir>/ali.{ark,scp} (int32 phone id per feature frame, keyed by "
        "cut id), phones.txt (SIL = 0) and report.{json,md} for the cuts of <fbank-dir>.",
    )
    p.add_argument("fbank_dir", help="stage-2 directory with cuts.jsonl.gz")
    p.add_argument("ali_dir", help="output directory")
    p.add_argument(
        "--nj", type=int, default=NJ, help="parallel decoding jobs (default: %(default)s)"
    )
    p.add_argument("--config", default=None, help="align YAML (default: built-in settings)")
    p.add_argument(
        "--ali-from",
        default="pocketsphinx",
        help="pocketsphinx (decode), oracle (the --oracle-dir labels) or kaldi:DIR "
        "(ali-to-phones --per-frame=true output + phones.txt)",
    )
    p.add_argument(
        "--oracle-dir",
        default=None,
        help="oracle alignment (ali.scp + phones.txt); when present the report compares to it",
    )
    p.add_argument(
        "--job", type=int, default=None,
        help="only dispatcher job J of --nj (utils/dispatch.sh JOB=1:N): decode that share "
        "with PocketSphinx (other --ali-from: nothing to do); the run without --job merges",
    )  # fmt: skip
    add_job_options(p, "align")
    p.add_argument(
        "--skip-bad", type=str2bool, default=False, help="leave out utterances without labels"
    )
    return p


def run(args: argparse.Namespace) -> None:
    if args.nj < 1:
        raise ApmError(f"--nj must be >= 1, got {args.nj}")
    if args.job is not None:
        if not 1 <= args.job <= args.nj:
            raise ApmError(f"--job {args.job}: expected a job number from 1 to --nj {args.nj}")
        if args.ali_from == "pocketsphinx":
            decode_job(args.fbank_dir, args.ali_dir, load_align_config(args.config), args.nj,
                       args.job)  # fmt: skip
        return
    cfg = load_align_config(args.config)
    if (
        args.cmd
        and args.ali_from == "pocketsphinx"
        and decode_jobs_left(args.fbank_dir, args.ali_dir, cfg, args.nj)
    ):
        log_dir = args.log_dir or str(Path(args.ali_dir) / "log")
        run_jobs(args.cmd, args.nj, f"{log_dir}/align.JOB.log", "apm.bin.align_phones",
                 without_options(sys.argv[1:], JOB_OPTIONS),
                 job=lambda j: run(argparse.Namespace(**{**vars(args), "job": j})))  # fmt: skip
    align_phones(
        args.fbank_dir,
        args.ali_dir,
        args.ali_from,
        cfg,
        nj=args.nj,
        oracle_dir=args.oracle_dir,
        skip_bad=args.skip_bad,
    )


if __name__ == "__main__":
    main(build_parser(), run)
