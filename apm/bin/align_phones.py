"""Frame-level phone labels for a feature directory (stage 3).

python -m apm.bin.align_phones [--nj N] [--config align.yaml] [--ali-from SOURCE]
    [--oracle-dir DIR] [--skip-bad true|false] <fbank-dir> <ali-dir>
"""

from __future__ import annotations

import argparse

from apm.align.config import load_align_config
from apm.align.pipeline import align_phones
from apm.bin.cli import main, str2bool
from apm.utils.defaults import NJ
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
        "--skip-bad", type=str2bool, default=False, help="leave out utterances without labels"
    )
    return p


def run(args: argparse.Namespace) -> None:
    if args.nj < 1:
        raise ApmError(f"--nj must be >= 1, got {args.nj}")
    align_phones(
        args.fbank_dir,
        args.ali_dir,
        args.ali_from,
        load_align_config(args.config),
        nj=args.nj,
        oracle_dir=args.oracle_dir,
        skip_bad=args.skip_bad,
    )


if __name__ == "__main__":
    main(build_parser(), run)
