#!/usr/bin/env python
"""Training throughput through the real data pipeline against the bare training step on the
same batches, for either data path (`train.data` memory or stream), and the model FLOP
utilisation (MFU).

"pipeline": one epoch of `apm.train.trainer.Trainer.train_epoch` (batches from the in-memory
corpus or streamed from disk, in --num-workers DataLoader workers, pinned on CUDA; CMN,
optional SpecAugment, host-to-device copy, forward, multi-task loss, NaN check, backward,
clipping, optimiser and LR steps, metrics).
"bare": `Trainer.train_step` alone on the same epoch's batches, built beforehand and already
on the device.
After one warm-up epoch, pipeline epochs and bare loops alternate for --rounds rounds (so both
see the same load on a shared machine) and the fastest of each is kept. frames/s count the
valid (unpadded) frames of the chunks. Overhead = 1 - pipeline / bare. MFU = frames/s x 6 x
MACs per frame (forward 2, backward 4) / the device's dense bf16 peak (H100 and H200: 989
TFLOP/s; n/a elsewhere).

    .venv/bin/python local/bench_train.py [--config egs/olr/conf/apm_am.yaml] [--threads 2]
        [--data memory|stream] [--batch-size N] [--num-workers N]
        [--fbank-dir egs/olr/data/fbank/train --ali-dir egs/olr/data/ali/train]
    GPU: --config egs/olr/conf/paper/apm_am.yaml --device cuda --amp bf16 --compile
        --batch-size 1024 --num-workers 8 --toy-utts 400

--ab-before adds, in every round, the "before" arms of issue 25 side by side with "after":
bare steps with the masked BatchNorm as it was (one elementwise autograd op at a time,
`masked_batchnorm_reference`) against the fused node, and, with --data stream, the loader
alone (batches built in this process, no training) reading ali.scp through kaldiio (element by
element) against `read_int32_vector` (np.frombuffer):

    .venv/bin/python local/bench_train.py --threads 1 --ab-before [--data stream]

Without --fbank-dir it trains on a synthetic corpus (apm.train.toy) of 40-dim features, 500
frames per utterance on average, 10 languages x --toy-utts utterances.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import kaldiio
import numpy as np
import torch

import apm.train.cuts
from apm.features.readers import read_int32_vector
from apm.nnet import MaskedBatchNorm1d
from apm.train.config import load_system_config
from apm.train.data import load_corpus
from apm.train.job import input_signature
from apm.train.toy import make_toy_corpus
from apm.train.trainer import Trainer
from apm.utils.dist import init_distributed

REPO = Path(__file__).resolve().parents[1]
# Dense bf16 tensor-core peaks (FLOP/s) by device name.
BF16_PEAK = {"H100": 989e12, "H200": 989e12}


def synchronize(trainer: Trainer) -> None:
    if trainer.env.device.type == "cuda":
        torch.cuda.synchronize()


def pipeline_epoch(trainer: Trainer) -> tuple[float, int]:
    """Seconds and valid frames of one training epoch through the real pipeline."""
    start = time.perf_counter()
    summary = trainer.train_epoch()
    synchronize(trainer)
    return time.perf_counter() - start, int(summary["frames"])


def bare_steps(trainer: Trainer, epoch: int) -> tuple[float, int]:
    """Seconds and valid frames of `train_step` alone over epoch `epoch`'s batches, built and
    moved to the device beforehand."""
    batches = [trainer._to_device(b) for b in trainer._batches(epoch)]
    frames = sum(int(b["mask"].sum()) for b in batches)
    synchronize(trainer)
    trainer.net.train()
    start = time.perf_counter()
    for i, batch in enumerate(batches):
        trainer.train_step(batch, i)
    synchronize(trainer)
    return time.perf_counter() - start, frames


def old_bn_bare_steps(trainer: Trainer, epoch: int) -> tuple[float, int]:
    """`bare_steps` with the masked BatchNorm as it was before the fused node."""
    from bench_nnet import _reference_forward  # local/ is on sys.path when run as a script

    fused = MaskedBatchNorm1d.forward
    MaskedBatchNorm1d.forward = _reference_forward
    try:
        return bare_steps(trainer, epoch)
    finally:
        MaskedBatchNorm1d.forward = fused


def loader_only(trainer: Trainer, epoch: int, kaldiio_reader: bool) -> tuple[float, int]:
    """Seconds and valid frames of building epoch `epoch`'s streamed batches in this process
    (one loader worker), alignments read by kaldiio or by `read_int32_vector`."""

    def by_kaldiio(ark, offset, key="?"):
        return kaldiio.load_mat(f"{ark}:{offset}")

    apm.train.cuts.read_int32_vector = by_kaldiio if kaldiio_reader else read_int32_vector
    try:
        start = time.perf_counter()
        frames = sum(int(b["mask"].sum()) for b in trainer._batches(epoch))
        return time.perf_counter() - start, frames
    finally:
        apm.train.cuts.read_int32_vector = read_int32_vector


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def parse_args() -> argparse.Namespace:
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
    p.add_argument("--data", choices=("memory", "stream"), default=None, help="train.data")
    p.add_argument("--batch-size", type=int, default=None, help="train.batch_size")
    p.add_argument("--num-workers", type=int, default=None, help="train.num_workers")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None, help="train.amp")
    p.add_argument("--compile", action="store_true", help="train.compile true")
    p.add_argument("--toy-utts", type=int, default=10, help="synthetic utterances per language")
    p.add_argument(
        "--toy-min-frames",
        type=int,
        default=300,
        help="shortest synthetic utterance (below chunk_max_frames: padded batches)",
    )
    p.add_argument(
        "--ab-before", action="store_true", help="also time issue 25's 'before' arms, interleaved"
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    cfg = load_system_config(args.config, seed=0)
    t = cfg["train"]
    t["valid_fraction"] = 0.0
    for key in ("data", "batch_size", "num_workers", "amp"):
        if getattr(args, key) is not None:
            t[key] = getattr(args, key)
    t["compile"] = t["compile"] or args.compile
    threads = t["threads"] if args.threads is None else args.threads
    env = init_distributed(args.device, threads)
    with tempfile.TemporaryDirectory() as tmp:
        fbank, ali = args.fbank_dir, args.ali_dir
        if fbank is None:
            toy = make_toy_corpus(
                tmp,
                num_langs=10,
                utts_per_lang=args.toy_utts,
                frames=(args.toy_min_frames, 700),
                feat_dim=40,
                num_phones=40,
            )
            fbank, ali = toy.fbank_dir, toy.ali_dir
        corpus = load_corpus(fbank, ali, cmn=t["cmn"], min_utt_frames=t["min_utt_frames"],
                             cache=t["data"] == "memory")  # fmt: skip
        pool = np.arange(len(corpus.ids))
        trainer = Trainer(cfg, corpus, pool, pool[:0], tmp, env)
        trainer.train_epoch()  # warm-up (and compilation)
        pipe, bare = [], []
        ab: dict[str, list] = {}
        # Alternating rounds see the same machine load; the fastest round of each is kept.
        for _ in range(args.rounds):
            pipe.append(pipeline_epoch(trainer))
            epoch = trainer.epoch - 1
            bare.append(bare_steps(trainer, epoch))
            if args.ab_before:
                ab.setdefault("bare, masked BN before (elementwise)", []).append(
                    old_bn_bare_steps(trainer, epoch)
                )
                ab.setdefault("bare, masked BN fused (now)", []).append(bare_steps(trainer, epoch))
                if not trainer.corpus.cached:
                    ab.setdefault("loader, ali via kaldiio (before)", []).append(
                        loader_only(trainer, epoch, kaldiio_reader=True)
                    )
                    ab.setdefault("loader, ali via frombuffer (now)", []).append(
                        loader_only(trainer, epoch, kaldiio_reader=False)
                    )
        padded = [bool(b.get("padded", True)) for b in trainer._batches(trainer.epoch - 1)]
        if args.ab_before:
            sig_times = signature_times(Path(fbank), None if ali is None else Path(ali), tmp)
    report(args, trainer, pipe, bare)
    if ab:
        print(f"padded batches (masked BatchNorm path): {sum(padded)} of {len(padded)}")
        report_ab(ab)
        store_mb, full, cached = sig_times
        print(
            f"  input_signature of {store_mb:.1f} MB of inputs: {full * 1e3:.1f} ms read in "
            f"full (before), {cached * 1e3:.2f} ms cached (now, unchanged files): "
            f"{full / cached:.0f}x"
        )


def signature_times(fbank: Path, ali: Path | None, tmp: str, reps: int = 5) -> tuple:
    """(MB hashed, best seconds of input_signature uncached, best seconds with a warm
    cache), interleaved."""
    cache = Path(tmp) / "sig-cache.json"
    input_signature(fbank, ali, cache)  # fills the cache (and the page cache)
    full, cached = [], []
    for _ in range(reps):
        start = time.perf_counter()
        input_signature(fbank, ali)
        full.append(time.perf_counter() - start)
        start = time.perf_counter()
        input_signature(fbank, ali, cache)
        cached.append(time.perf_counter() - start)
    size = sum(p.stat().st_size for p in fbank.rglob("*") if p.is_file())
    return size / 1e6, min(full), min(cached)


def report_ab(ab: dict[str, list]) -> None:
    """Before/after pairs, interleaved in the same rounds: best frames/s and the ratio."""
    print("issue 25, before vs after (same rounds, interleaved; best of each):")
    names = list(ab)
    for before, after in zip(names[::2], names[1::2], strict=True):
        fps = {n: max(frames / s for s, frames in ab[n]) for n in (before, after)}
        for n in (before, after):
            print(f"  {n:<40} {fps[n]:11.0f} frames/s")
        print(f"  {'ratio after / before':<40} {fps[after] / fps[before]:11.2f}x")


def report(args: argparse.Namespace, trainer: Trainer, pipe: list, bare: list) -> None:
    t, env = trainer.tcfg, trainer.env
    pipe_fps = max(frames / s for s, frames in pipe)
    bare_fps = max(frames / s for s, frames in bare)
    print(
        f"config {args.config}; device {env.device}"
        f"{' (' + torch.cuda.get_device_name(env.device) + ')' if env.device.type == 'cuda' else ''}"
        f", {torch.get_num_threads()} threads; data {t['data']}, {t['num_workers']} workers, "
        f"amp {t['amp'] if env.device.type == 'cuda' else 'n/a (CPU)'}, compile {t['compile']}"
    )
    print(
        f"batches per epoch {trainer.steps_per_epoch} x {t['batch_size']} chunks of "
        f"{t['chunk_min_frames']}-{t['chunk_max_frames']} frames"
    )
    for name, runs, fps in (("pipeline", pipe, pipe_fps), ("bare    ", bare, bare_fps)):
        times = ", ".join(f"{s:.2f}" for s, _ in runs)
        print(f"{name}: {fps:11.0f} frames/s  ({runs[0][1]} frames, best of {times} s)")
    print(
        f"pipeline / bare = {pipe_fps / bare_fps:.3f}  "
        f"(overhead {100 * (1 - pipe_fps / bare_fps):.1f}%)"
    )
    flops_per_frame = 6 * trainer.model.macs_per_frame()
    peak = peak_flops(env.device)
    if peak is None:
        print(
            f"MFU: n/a (no bf16 peak known for {env.device}); {flops_per_frame / 1e6:.1f} "
            f"MFLOP per training frame"
        )
    else:
        print(
            f"MFU (bf16 peak {peak / 1e12:.0f} TFLOP/s): pipeline {pipe_fps * flops_per_frame / peak:.1%}, "
            f"bare {bare_fps * flops_per_frame / peak:.1%}"
        )


if __name__ == "__main__":
    main()
