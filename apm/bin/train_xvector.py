"""Stage 4: train one multi-task x-vector system (conf/<system>.yaml) into exp/<system>/.

Run plainly for one process, or under `torchrun --nproc_per_node N` for DDP (one process per
GPU; gloo on CPU). A rerun continues after the last epoch checkpoint.

With `--seeds S1 S2 ...` and one experiment directory per seed, the seeds' trainings run
together in this process (apm.train.seed_batch: one vmapped forward/backward per step over
the stacked models; each directory gets what a training of that seed alone would write, up
to float rounding). That fills a GPU that one small model leaves idle; on a CPU, separate
processes are as fast.
"""

import argparse
from pathlib import Path

from apm.bin.cli import main, str2bool
from apm.train.config import load_system_config
from apm.train.job import TrainJob, run_seed_batch, run_training
from apm.utils.dist import DEVICES
from apm.utils.errors import ApmError


def seed_list(text: str) -> list[int]:
    """'1 2 3' or '1,2,3' -> [1, 2, 3]."""
    try:
        seeds = [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds needs at least one seed")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_xvector", description=__doc__)
    p.add_argument("--config", required=True, help="system YAML (model, loss, train, extract)")
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides the YAML's)")
    p.add_argument(
        "--seeds",
        type=seed_list,
        default=None,
        help='train these seeds at once (seed batch), e.g. "1 2 3"; one exp_dir per seed, in order',
    )
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
    p.add_argument("exp_dir", type=Path, nargs="+", help="output: exp/<system> (one per --seeds)")
    return p


def run(args: argparse.Namespace) -> None:
    seeds = args.seeds if args.seeds is not None else [args.seed]
    if args.seeds is not None and args.seed is not None:
        raise ApmError("give --seed (one training) or --seeds (a seed batch), not both")
    if len(args.exp_dir) != len(seeds):
        raise ApmError(
            f"{len(seeds)} seed(s) but {len(args.exp_dir)} experiment directories: give one "
            "exp_dir per seed of --seeds (and exactly one without it)"
        )
    jobs = [
        TrainJob(
            config=load_system_config(args.config, seed),
            fbank_dir=args.fbank_dir,
            exp_dir=exp_dir,
            ali_dir=args.ali_dir,
            resume=args.resume,
            skip_unaligned=args.skip_unaligned,
            device=args.device,
        )
        for seed, exp_dir in zip(seeds, args.exp_dir, strict=True)
    ]
    if args.seeds is None:
        run_training(jobs[0])
    else:
        run_seed_batch(jobs)


if __name__ == "__main__":
    main(build_parser(), run)
