"""Noise and RIR manifests for on-the-fly augmentation (the `augment:` section of a system
config): <out>/{noise,music,babble}.jsonl.gz from a MUSAN root and <out>/rirs.jsonl.gz from an
RIRS_NOISES root, imported with lhotse's musan and rir_noise recipes."""

import argparse

from apm.bin.cli import main, str2bool
from apm.features.augment import prepare_augment_sets


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prepare_augment", description=__doc__)
    p.add_argument("--musan", default=None, help="MUSAN root (holds noise/, music/, speech/)")
    p.add_argument(
        "--rirs-noises", default=None, help="RIRS_NOISES root (holds simulated_rirs/ ...)"
    )
    p.add_argument(
        "--rir-parts", default="sim_rir", help="RIR parts, space separated: sim_rir real_rir"
    )
    p.add_argument("--skip-bad", type=str2bool, default=False,
                   help="leave out (log and count) unreadable files or files with NaN/Inf samples")  # fmt: skip
    p.add_argument("out", help="output directory of the recordings manifests")
    return p


def run(args: argparse.Namespace) -> None:
    prepare_augment_sets(
        args.out,
        args.musan or None,
        args.rirs_noises or None,
        tuple(args.rir_parts.split()),
        args.skip_bad,
    )


if __name__ == "__main__":
    main(build_parser(), run)
