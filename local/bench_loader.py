#!/usr/bin/env python
"""Training-data loader throughput and peak memory: this checkout against an older commit,
side by side in one run.

For each chunk config (the recipe default egs/olr/conf/apm_am.yaml: batch 32, chunks of
200-300 frames; the paper's egs/olr/conf/paper/apm_am.yaml: batch 128, 200-400 frames,
SpecAugment), each data path (`train.data` memory and stream) and each code version (--before
REF, extracted with `git archive` into a temporary directory, and this checkout), a child
process loads or indexes a synthetic feature set in stage 2/3's layout
(local/bench_train_memory.py `generate`: 5 s cuts of random 40-dim frames, lilcom chunky
storage, vad.scp, ali.scp) and builds --batches training batches of epoch 0 in the process
(`Trainer._batches`, `train.num_workers: 0`: one loader worker's throughput, no training step).
Children run interleaved, --rounds times (arm by arm, so all see the same load on a shared
machine); the fastest round of each arm is kept. frames/s count the valid (unpadded) frames;
peak RSS is the child's (`os.wait4` ru_maxrss).

    .venv/bin/python local/bench_loader.py --before a81496a [--hours 1] [--batches 40]
        [--rounds 3] [--configs default paper] [--data memory stream]
        [--work /tmp/apm_bench_memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "default": REPO / "egs/olr/conf/apm_am.yaml",
    "paper": REPO / "egs/olr/conf/paper/apm_am.yaml",
}


def child(args: argparse.Namespace) -> None:
    """Load the set and build `--batches` batches with the `apm` on sys.path; print JSON."""
    import resource

    import torch

    from apm.train.config import load_system_config
    from apm.train.data import split_validation
    from apm.train.job import TrainJob, _load_data
    from apm.train.trainer import Trainer
    from apm.utils.dist import init_distributed

    cfg = load_system_config(CONFIGS[args.config], seed=0)
    cfg["train"].update(data=args.data, num_workers=0, threads=1, valid_fraction=0.0)
    env = init_distributed("cpu", 1)
    fbank, ali = args.set / "fbank", args.set / "ali"
    with tempfile.TemporaryDirectory() as exp:
        job = TrainJob(cfg, fbank, Path(exp), ali)
        start = time.perf_counter()
        corpus = _load_data(job)
        loaded = time.perf_counter() - start
        pool, _ = split_validation(corpus, 0.0, 0)
        trainer = Trainer(cfg, corpus, pool, pool[:0], exp, env)
        frames, built = 0, 0
        start = time.perf_counter()
        for batch in trainer._batches(0):
            frames += int(batch["mask"].sum())
            built += 1
            if built == args.batches:
                break
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"load_s": loaded, "frames_per_s": frames / seconds, "batches": built,
                      "self_peak_mib": peak, "threads": torch.get_num_threads()}))  # fmt: skip


def extract(ref: str, into: Path) -> Path:
    """`apm/` of commit `ref` under `into` (importable with `into` on PYTHONPATH)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "apm"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def measure(code: Path, config: str, data: str, path: Path, batches: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--config", config, "--data", data,
           "--set", str(path), "--batches", str(batches)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=code)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"child {code} {config} {data} failed ({status})")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_mib": usage.ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--before", default=None, help="git commit to compare with (omit: only this)")
    p.add_argument("--hours", type=float, nargs="+", default=[1.0], help="synthetic set sizes")
    p.add_argument("--batches", type=int, default=40, help="batches built per child")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best is kept)")
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    p.add_argument("--data", nargs="+", choices=("memory", "stream"), default=["memory", "stream"])
    p.add_argument("--work", type=Path, default=Path("/tmp/apm_bench_memory"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", default="default", help=argparse.SUPPRESS)
    p.add_argument("--set", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.data = args.data[0] if isinstance(args.data, list) else args.data
        child(args)
        return
    sys.path.insert(0, str(REPO / "local"))
    from bench_train_memory import generate

    for hours in args.hours:
        seconds = generate(args.work / f"{hours:g}h", hours)
        if seconds:
            print(f"generated {hours:g} h in {seconds:.0f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"this": REPO}
        if args.before:
            codes = {args.before: extract(args.before, Path(tmp)), "this": REPO}
        arms = [(c, cfg, d, h) for cfg in args.configs for d in args.data for h in args.hours
                for c in codes]  # fmt: skip
        best: dict = {}
        for r in range(args.rounds):
            for arm in arms:
                code, cfg, data, hours = arm
                res = measure(codes[code], cfg, data, args.work / f"{hours:g}h", args.batches)
                if arm not in best or res["frames_per_s"] > best[arm]["frames_per_s"]:
                    best[arm] = res
                print(f"round {r + 1} {code:>9s} {cfg:7s} {data:6s} {hours:5g} h: "
                      f"{res['frames_per_s'] / 1e6:6.3f} M frames/s, load {res['load_s']:5.1f} s, "
                      f"peak RSS {res['peak_mib']:6.0f} MiB", flush=True)  # fmt: skip
    print("\nbest of rounds (one loader worker, frames/s of valid frames):")
    for (code, cfg, data, hours), res in best.items():
        line = (f"  {code:>9s} {cfg:7s} {data:6s} {hours:5g} h: "
                f"{res['frames_per_s'] / 1e6:6.3f} M frames/s, peak RSS {res['peak_mib']:6.0f} MiB")  # fmt: skip
        if args.before and code == "this":
            ref = best[args.before, cfg, data, hours]
            line += f"  (x{res['frames_per_s'] / ref['frames_per_s']:.2f} vs {args.before})"
        print(line)


if __name__ == "__main__":
    main()
