#!/usr/bin/env python
"""Training throughput through the real data pipeline against a bare training loop.

"pipeline": one epoch of `apm.train.trainer.Trainer.train_epoch` (chunk sampling from the
in-memory corpus, CMN, optional SpecAugment, batch assembly, forward, multi-task loss, NaN
check, backward, clipping, optimiser and LR steps, metrics).
"bare": the same model, loss and optimiser stepped on pre-built random tensors of exactly the
same batch shapes (the epoch plan's chunk lengths), nothing else.
After one warm-up epoch, pipeline epochs and bare loops alternate for --rounds rounds (so both
see the same load on a shared machine) and the fastest of each is kept. frames/s count the
frames of the chunks (padding excluded for the pipeline: conservative). Overhead = 1 -
pipeline / bare.

    .venv/bin/python local/bench_train.py [--config egs/olr/conf/apm_am.yaml] [--threads 2]
        [--fbank-dir egs/olr/data/fbank/train --ali-dir egs/olr/data/ali/train]

Without --fbank-dir it trains on a synthetic corpus (apm.train.toy) of 40-dim features.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from apm.train.batches import plan_epoch
from apm.train.config import load_config
from apm.train.data import load_corpus
from apm.train.toy import make_toy_corpus
from apm.train.trainer import Trainer
from apm.utils.dist import init_distributed

REPO = Path(__file__).resolve().parents[1]


def bare_loop(trainer: Trainer, lengths: np.ndarray, rows: int) -> tuple[float, int]:
    """Seconds and frames of forward/backward/step on random batches of the given shapes."""
    dim, langs, phones = (
        trainer.corpus.feat_dim,
        len(trainer.corpus.languages),
        trainer.corpus.num_phones,
    )
    gen = torch.Generator().manual_seed(0)
    batches = []
    for length in lengths:
        batch = {
            "feats": torch.randn(rows, int(length), dim, generator=gen),
            "mask": torch.ones(rows, int(length), dtype=torch.bool),
            "langs": torch.randint(0, langs, (rows,), generator=gen),
        }
        if phones:
            batch["phones"] = torch.randint(0, phones, (rows, int(length)), generator=gen)
        batches.append({k: v.to(trainer.env.device) for k, v in batch.items()})
    trainer.net.train()
    start = time.perf_counter()
    for batch in batches:
        trainer.optimizer.zero_grad(set_to_none=True)
        _, res = trainer._forward(batch, trainer.net)
        res.loss.backward()
        trainer.optimizer.step()
    if trainer.env.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, int(sum(lengths) * rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=str(REPO / "egs/olr/conf/apm_am.yaml"))
    p.add_argument("--fbank-dir", type=Path, default=None)
    p.add_argument("--ali-dir", type=Path, default=None)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: the config's train.threads; 0: all cores)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--rounds", type=int, default=3, help="timed epochs of each kind")
    args = p.parse_args()
    cfg = load_config(args.config, seed=0)
    cfg["train"]["valid_fraction"] = 0.0
    threads = cfg["train"]["threads"] if args.threads is None else args.threads
    env = init_distributed(args.device, threads)
    t = cfg["train"]
    with tempfile.TemporaryDirectory() as tmp:
        fbank, ali = args.fbank_dir, args.ali_dir
        if fbank is None:
            toy = make_toy_corpus(
                tmp, num_langs=10, utts_per_lang=10, frames=(300, 700), feat_dim=40, num_phones=40
            )
            fbank, ali = toy.fbank_dir, toy.ali_dir
        corpus = load_corpus(fbank, ali, cmn=t["cmn"], min_utt_frames=t["min_utt_frames"])
        pool = np.arange(len(corpus.ids))
        trainer = Trainer(cfg, corpus, pool, pool[:0], tmp, env)
        trainer.train_epoch()  # warm-up
        pipe_s, bare_s = [], []
        # Alternating rounds see the same machine load; the fastest round of each is kept.
        for _ in range(args.rounds):
            start = time.perf_counter()
            summary = trainer.train_epoch()
            pipe_s.append(time.perf_counter() - start)
            plan = plan_epoch(corpus, pool, t, cfg["seed"], trainer.epoch - 1)
            seconds, bare_frames = bare_loop(trainer, plan.lengths, t["batch_size"])
            bare_s.append(seconds)
    pipe_fps, bare_fps = summary["frames"] / min(pipe_s), bare_frames / min(bare_s)
    print(f"config {args.config}; device {env.device}, {torch.get_num_threads()} threads")
    print(
        f"batches per epoch {len(plan)} x {t['batch_size']} chunks of {t['chunk_min_frames']}-{t['chunk_max_frames']} frames"
    )
    print(
        f"pipeline: {pipe_fps:9.0f} frames/s  ({summary['frames']} frames, best of {', '.join(f'{x:.2f}' for x in pipe_s)} s)"
    )
    print(
        f"bare    : {bare_fps:9.0f} frames/s  ({bare_frames} frames, best of {', '.join(f'{x:.2f}' for x in bare_s)} s)"
    )
    print(
        f"pipeline / bare = {pipe_fps / bare_fps:.3f}  (overhead {100 * (1 - pipe_fps / bare_fps):.1f}%)"
    )


if __name__ == "__main__":
    main()
