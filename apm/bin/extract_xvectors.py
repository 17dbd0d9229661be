"""Stage 5: x-vectors (xvector.scp) and language scores (logits.scp) of one feature set.

Run plainly for one process, or under `torchrun --nproc_per_node N` to shard the cuts.
"""

import argparse
from pathlib import Path

from apm.bin.cli import main
from apm.extract.xvectors import ExtractJob, run_extraction
from apm.train.dist import DEVICES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extract_xvectors", description=__doc__)
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA if present")
    p.add_argument("--model", default="final.pt", help="checkpoint inside exp_dir")
    p.add_argument("exp_dir", type=Path, help="trained system (exp/<system>)")
    p.add_argument("fbank_dir", type=Path, help="stage 2 output of the set")
    p.add_argument("out_dir", type=Path, help="output: exp/<system>/xvectors/<set>")
    return p


def run(args: argparse.Namespace) -> None:
    run_extraction(ExtractJob(args.exp_dir, args.fbank_dir, args.out_dir, args.device, args.model))


if __name__ == "__main__":
    main(build_parser(), run)
