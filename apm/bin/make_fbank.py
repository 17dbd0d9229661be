"""Stage 2: fbank + energy VAD of every cut: a lilcom-compressed lhotse store plus Kaldi
vad.scp, and with --kaldi-copy true a Kaldi feats.scp copy of the features."""

import argparse

from apm.bin.cli import main, str2bool
from apm.features.fbank import load_feature_config
from apm.features.pipeline import make_fbank
from apm.utils.defaults import NJ


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
    p.add_argument("manifests", help="directory with <set>/cuts.jsonl.gz (stage 1)")
    p.add_argument("out", help="output: <out>/<set>/")
    p.add_argument("sets", nargs="+")
    return p


def run(args: argparse.Namespace) -> None:
    make_fbank(
        args.manifests,
        args.out,
        args.sets,
        load_feature_config(args.config),
        nj=args.nj,
        skip_bad=args.skip_bad,
        kaldi_copy=args.kaldi_copy,
    )


if __name__ == "__main__":
    main(build_parser(), run)
