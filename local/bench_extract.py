#!/usr/bin/env python
"""Stage 5 throughput: batched extraction (chunks sorted by length, padded with a mask) against
one utterance per forward pass, side by side on the same prepared utterances.

Both run in this process on the same system and the same VAD+CMN-prepared features (reading
and preparation are excluded, so the ratio is the network's); they alternate for --rounds
rounds and the fastest of each is kept. Also prints the largest difference between the two
x-vectors (batching must not change them).

    .venv/bin/python local/bench_extract.py --system egs/olr/exp/apm_am \\
        --fbank-dir egs/olr/data/fbank/task_full [--utts 400] [--threads 1]

(run from the repository root after ./run.sh; paths inside the fbank dir are relative to
egs/olr, so the script works from there.)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from apm.extract.xvectors import BATCH_FRAMES, embed, embed_batch, load_system
from apm.features.readers import prepare_frames, read_cuts, read_scp
from apm.nnet import checkpoint

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "olr"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--system", type=Path, default=RECIPE / "exp" / "apm_am")
    p.add_argument("--fbank-dir", type=Path, default=RECIPE / "data" / "fbank" / "task_full")
    p.add_argument("--utts", type=int, default=400, help="utterances embedded per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-frames", type=int, default=BATCH_FRAMES["cpu"])
    args = p.parse_args()
    system_dir, fbank = args.system.resolve(), args.fbank_dir.resolve()
    os.chdir(RECIPE)  # generated paths are relative to the recipe directory
    torch.set_num_threads(args.threads)
    system = load_system(checkpoint.load(system_dir / "final.pt"), torch.device("cpu"))
    cfg = system.config
    vad = read_scp(fbank / "vad.scp", "vad")
    cuts = sorted(read_cuts(fbank), key=lambda c: c.id)[: args.utts]
    feats = [prepare_frames(c, vad, cfg["train"]["cmn"], cfg["extract"]["min_voiced_frames"])[0]
             for c in cuts]  # fmt: skip
    frames = sum(len(f) for f in feats)
    best = {"one at a time": np.inf, "batched": np.inf}
    for _ in range(args.rounds):
        start = time.perf_counter()
        single = [embed(system, f) for f in feats]
        best["one at a time"] = min(best["one at a time"], time.perf_counter() - start)
        start = time.perf_counter()
        batched = embed_batch(system, feats, args.batch_frames)
        best["batched"] = min(best["batched"], time.perf_counter() - start)
    diff = max(float(np.abs(a[0] - b[0]).max()) for a, b in zip(single, batched, strict=True))
    print(f"{len(feats)} utterances, {frames} frames, {args.threads} thread(s), "
          f"batch {args.batch_frames} frames, {system_dir.name}")  # fmt: skip
    for name, seconds in best.items():
        print(f"  {name:14s} {len(feats) / seconds:8.1f} utt/s  {frames / seconds:10.0f} frames/s")
    print(f"  speed-up {best['one at a time'] / best['batched']:.2f}x; "
          f"largest x-vector difference {diff:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
