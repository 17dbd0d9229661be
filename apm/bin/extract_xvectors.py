"""Stage 5: x-vectors (xvector.scp) and language scores (logits.scp) of feature sets.

One process loads the model once and embeds every set given (fbank_dir out_dir pairs),
batching utterances sorted by length. Run plainly, or under `torchrun --nproc_per_node N` to
shard the cuts.
"""

import argparse
from pathlib import Path

from apm.bin.cli import main
from apm.extract.xvectors import ExtractJob, run_extraction
from apm.utils import ApmError
from apm.utils.dist import DEVICES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extract_xvectors", description=__doc__)
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA if present")
    p.add_argument("--model", default="final.pt", help="checkpoint inside exp_dir")
    p.add_argument("exp_dir", type=Path, help="trained system (exp/<system>)")
    p.add_argument("--batch-frames", type=int, default=0,
                   help="padded frames per forward pass (0: 4000 on CPU, 65536 on a GPU)")  # fmt: skip
    p.add_argument("--nj", type=int, default=1,
                   help="dispatcher jobs sharing the cuts (utils/dispatch.sh JOB=1:N); with "
                   "--nj > 1 and no --job: merge the jobs' parts")  # fmt: skip
    p.add_argument("--job", type=int, default=None,
                   help="only job J of --nj: every N-th cut from the J-th, as a part")  # fmt: skip
    p.add_argument("sets", nargs="+", type=Path, metavar="FBANK_DIR OUT_DIR",
                   help="pairs: stage 2 output of a set, its output exp/<system>/xvectors/<set>")  # fmt: skip
    return p


def run(args: argparse.Namespace) -> None:
    if len(args.sets) % 2 or args.batch_frames < 0:
        raise ApmError("expected FBANK_DIR OUT_DIR pairs and --batch-frames >= 0, got "
                       f"{len(args.sets)} paths and {args.batch_frames}")  # fmt: skip
    if args.nj < 1 or (args.job is not None and not 1 <= args.job <= args.nj):
        raise ApmError(f"--nj {args.nj} --job {args.job}: expected --nj >= 1 and a job "
                       "number from 1 to --nj")  # fmt: skip
    pairs = list(zip(args.sets[::2], args.sets[1::2], strict=True))
    run_extraction(ExtractJob(args.exp_dir, *pairs[0], args.device, args.model,
                              args.batch_frames, tuple(pairs[1:]), args.nj, args.job))  # fmt: skip


if __name__ == "__main__":
    main(build_parser(), run)
