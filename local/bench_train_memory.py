#!/usr/bin/env python
"""Peak memory of a training process against corpus size: streamed vs in-memory data.

Generates random feature sets of the given sizes in stage 2's layout (lhotse cuts in
`cuts.jsonl.gz`, lilcom chunky feature storage, `vad.scp`, plus `ali.scp` and `phones.txt`):
every cut has its own random frames (5 s, 40 bins), so reads are as real as for fbank. The
sets are cached under --work (a `.complete` stamp; generation time is printed when it runs).
Then, for each (data path, size), a child process indexes/loads the set and trains --steps
optimiser steps of a small x-vector; its peak RSS is read from the kernel (`os.wait4`'s
ru_maxrss of that child).

    .venv/bin/python local/bench_train_memory.py [--hours 1 100] [--memory-hours 1 10]
        [--steps 30] [--work /tmp/apm_bench_memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import kaldiio
import numpy as np

from apm.train.toy import FRAME_SHIFT

CUT_FRAMES, FEAT_DIM, NUM_PHONES, LANGS = 500, 40, 40, 10
REPO = Path(__file__).resolve().parents[1]


def generate(out: Path, hours: float, seed: int = 0) -> float:
    """Write a random feature set of `hours` hours under `out`; seconds taken (0 if cached)."""
    from lhotse import CutSet, Features, MonoCut, SupervisionSegment
    from lhotse.features.io import LilcomChunkyWriter

    stamp = out / ".complete"
    if stamp.is_file():
        return 0.0
    start = time.perf_counter()
    fbank, ali = out / "fbank", out / "ali"
    fbank.mkdir(parents=True, exist_ok=True)
    ali.mkdir(parents=True, exist_ok=True)
    num_cuts = round(hours * 3600 / (CUT_FRAMES * FRAME_SHIFT))
    rng = np.random.default_rng(seed)
    duration = CUT_FRAMES * FRAME_SHIFT
    with (
        LilcomChunkyWriter(fbank / "feats.lca") as writer,
        CutSet.open_writer(fbank / "cuts.jsonl.gz") as cuts,
        kaldiio.WriteHelper(f"ark,scp:{fbank / 'vad.ark'},{fbank / 'vad.scp'}") as vads,
        kaldiio.WriteHelper(f"ark,scp:{ali / 'ali.ark'},{ali / 'ali.scp'}") as alis,
    ):
        for i in range(num_cuts):
            cut_id, lang = f"utt{i:07d}", f"l{i % LANGS}"
            x = rng.standard_normal((CUT_FRAMES, FEAT_DIM), dtype=np.float32) + 5.0
            key = writer.write(cut_id, x)
            feats = Features(
                type="fbank",
                num_frames=CUT_FRAMES,
                num_features=FEAT_DIM,
                frame_shift=FRAME_SHIFT,
                sampling_rate=16000,
                start=0.0,
                duration=duration,
                storage_type=writer.name,
                storage_path=str(writer.storage_path),
                storage_key=key,
                recording_id=cut_id,
            )
            sup = SupervisionSegment(cut_id, cut_id, 0.0, duration, language=lang, speaker=lang)
            cuts.write(MonoCut(cut_id, 0.0, duration, 0, features=feats, supervisions=[sup]))
            vad = (rng.random(CUT_FRAMES) > 0.15).astype(np.float32)
            vads(cut_id, vad)
            alis(cut_id, rng.integers(0, NUM_PHONES, CUT_FRAMES, dtype=np.int32))
    (ali / "phones.txt").write_text("".join(f"p{i} {i}\n" for i in range(NUM_PHONES)))
    stamp.write_text(f"{num_cuts} cuts\n")
    return time.perf_counter() - start


def child(args: argparse.Namespace) -> None:
    """Index or load the set, then train `--steps` steps; print the figures as JSON."""
    import resource

    import torch

    from apm.train.config import resolve_config
    from apm.train.data import load_corpus, split_validation
    from apm.train.trainer import Trainer
    from apm.utils.dist import init_distributed

    raw = {
        "model": {"trunk": "tdnn", "channels": 64, "stats_channels": 128, "embed_dim": 64},
        "loss": {"kind": "apm"},
        "train": {
            "data": args.data,
            "batch_size": 64,
            "chunk_min_frames": 200,
            "chunk_max_frames": 400,
            "valid_fraction": 0.0,
            "num_workers": 0,
            "threads": 2,
        },
    }
    cfg = resolve_config(raw, "bench", seed=0)
    t = cfg["train"]
    env = init_distributed("cpu", t["threads"])
    start = time.perf_counter()
    fbank, ali = args.set / "fbank", args.set / "ali"
    corpus = load_corpus(fbank, ali, cmn=t["cmn"], min_utt_frames=t["min_utt_frames"],
                         cache=args.data == "memory")  # fmt: skip
    loaded = time.perf_counter() - start
    pool, _ = split_validation(corpus, 0.0, 0)
    trainer = Trainer(cfg, corpus, pool, pool[:0], args.set, env)
    start = time.perf_counter()
    frames = 0
    for i, batch in zip(range(args.steps), trainer._batches(0), strict=False):
        trainer.train_step(trainer._to_device(batch), i)
        frames += int(batch["mask"].sum())
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"load_s": loaded, "train_s": seconds, "frames_per_s": frames / seconds}
    print(json.dumps({**result, "self_peak_mib": peak, "threads": torch.get_num_threads()}))


def measure(data: str, path: Path, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--data", data, "--set", str(path)]
    # The child imports this checkout's apm, whatever the virtualenv has installed.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [*cmd, "--steps", str(steps)], stdout=subprocess.PIPE, text=True, env=env
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"child for {data} {path} failed ({status})")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_mib": usage.ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hours", type=float, nargs="+", default=[1, 100], help="streamed sizes")
    p.add_argument("--memory-hours", type=float, nargs="*", default=[1, 10], help="in memory")
    p.add_argument("--steps", type=int, default=30, help="training steps per run")
    p.add_argument("--work", type=Path, default=Path("/tmp/apm_bench_memory"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", default="stream", help=argparse.SUPPRESS)
    p.add_argument("--set", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    runs = [("stream", h) for h in args.hours] + [("memory", h) for h in args.memory_hours]
    for hours in sorted({h for _, h in runs}):
        seconds = generate(args.work / f"{hours:g}h", hours)
        if seconds:
            print(f"generated {hours:g} h in {seconds:.0f} s", flush=True)
    results = {}
    for data, hours in runs:
        r = measure(data, args.work / f"{hours:g}h", args.steps)
        results[data, hours] = r
        print(
            f"{data:6s} {hours:6g} h: peak RSS {r['peak_mib']:7.0f} MiB; index/load "
            f"{r['load_s']:6.1f} s; {args.steps} steps {r['train_s']:5.1f} s, "
            f"{r['frames_per_s']:8.0f} frames/s",
            flush=True,
        )
    streamed = sorted(h for d, h in results if d == "stream")
    if len(streamed) > 1:
        low, high = results["stream", streamed[0]], results["stream", streamed[-1]]
        print(
            f"stream peak RSS {streamed[-1]:g} h / {streamed[0]:g} h = "
            f"{high['peak_mib'] / low['peak_mib']:.3f}"
        )


if __name__ == "__main__":
    main()
