"""Stage 4: train one multi-task x-vector system (conf/<system>.yaml) into exp/<system>/.

Run plainly for one process, or under `torchrun --nproc_per_node N` for DDP (one process per
GPU; gloo on CPU). A rerun continues after the last epoch checkpoint.
"""

import argparse
from pathlib import Path

from apm.bin.cli import main, str2bool
from apm.train.config import load_system_config
from apm.train.job import TrainJob, run_training
from apm.utils.dist import DEVICES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_xvector", description=__doc__)
    p.add_argument("--config", required=True, help="system YAML (model, loss, train, extract)")
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides the YAML's)")
    p.add_argument("--ali-dir", type=Path, default=None, help="stage 3 output: ali.scp, phones.txt")
    p.add_argument(
        "--resume",
        type=str2bool,
        default=True,
        help="continue after the last epoch checkpoint (false: start over)",
    )
    p.add_argument(
        "--skip-unaligned",
        type=str2bool,
        default=False,
        help="skip (and count) cuts without an alignment instead of stopping",
    )
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA if present")
    p.add_argument("fbank_dir", type=Path, help="stage 2 output of the training set")
    p.add_argument("exp_dir", type=Path, help="output: exp/<system>")
    return p


def run(args: argparse.Namespace) -> None:
    job = TrainJob(
        config=load_system_config(args.config, args.seed),
        fbank_dir=args.fbank_dir,
        exp_dir=args.exp_dir,
        ali_dir=args.ali_dir,
        resume=args.resume,
        skip_unaligned=args.skip_unaligned,
        device=args.device,
    )
    run_training(job)


if __name__ == "__main__":
    main(build_parser(), run)
