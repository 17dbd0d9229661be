#!/usr/bin/env python
"""Does seed-batched training (apm.train.seed_batch) make seeds cheaper? Side by side, in one run.

Two measurements of S trainings of one system config (seeds 1..S), each way timed in turn
(--rounds times, interleaved, so a busy machine slows both alike):

  in-process (default): one epoch of each of the S trainers one after the other
      (`Trainer.run_epoch`, what S training processes compute) against one epoch of all S as a
      seed batch (`SeedBatch.run_epoch`: one vmapped forward/backward over the stacked
      models); --threads torch threads; prints frames/s and the ratio of the medians.
  --processes: whole trainings (`python -m apm.bin.train_xvector`, --epochs epochs) the way
      local/reproduce_tables.sh runs them: S processes, --jobs at a time (today's path),
      against --jobs processes each training S/--jobs seeds as a seed batch; prints the wall
      time, trainings per hour and the ratio.

Data: --fbank-dir/--ali-dir (a stage 2/3 training set, e.g. egs/olr/data/fbank/train and
egs/olr/data/ali/train), or a generated toy corpus (apm.train.toy) with long enough
utterances for the config's chunks.

    .venv/bin/python local/bench_seed_batch.py [--conf egs/olr/conf/am.yaml] [--seeds 4]
        [--fbank-dir D --ali-dir A] [--device cpu|cuda] [--processes --jobs 2 --epochs 1]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from apm.train.config import load_system_config
from apm.train.data import load_corpus, split_validation
from apm.train.seed_batch import SeedBatch
from apm.train.toy import make_toy_corpus
from apm.train.trainer import Trainer
from apm.utils.dist import init_distributed

ROOT = Path(__file__).resolve().parents[1]
RECIPE_CONF = ROOT / "egs/olr/conf/am.yaml"


def epoch_config(conf: Path, epochs: int, out: Path) -> Path:
    """A copy of `conf` training `epochs` epochs, averaging at most that many."""
    cfg = yaml.safe_load(conf.read_text(encoding="utf-8"))
    train = cfg.setdefault("train", {})
    train["epochs"] = epochs
    train["average_last"] = min(train.get("average_last", 1), epochs)
    train["warmup_epochs"] = min(train.get("warmup_epochs", 0), epochs / 2)
    path = out / conf.name
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def in_process(args: argparse.Namespace, conf: Path, fbank: Path, ali: Path) -> None:
    env = init_distributed(args.device, args.threads)
    tcfg = load_system_config(conf, 1)["train"]
    corpus = load_corpus(fbank, ali, cmn=tcfg["cmn"], min_utt_frames=tcfg["min_utt_frames"])
    seeds = range(1, args.seeds + 1)

    def trainers() -> list[Trainer]:
        made = []
        for seed in seeds:
            cfg = load_system_config(conf, seed)
            pool, valid = split_validation(corpus, cfg["train"]["valid_fraction"], seed)
            made.append(Trainer(cfg, corpus, pool, valid[:0], tempfile.mkdtemp(), env))
        return made

    def one_after_another() -> int:
        frames = 0
        for t in trainers():
            frames += t.train_epoch()["frames"]
        return frames

    def seed_batch() -> int:
        batch = trainers()
        none = [None] * len(batch)
        return sum(m["frames"] for m in SeedBatch(batch).train_epoch(batch, none, none))

    ways = {"one after another": one_after_another, "seed batch": seed_batch}
    rates: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(args.rounds):
        for name, fn in ways.items():
            sync(env.device)
            t = time.perf_counter()
            frames = fn()
            sync(env.device)
            rates[name].append(frames / (time.perf_counter() - t))
            print(f"round {r}: {name:18s} {rates[name][-1]:10.0f} frames/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{args.seeds} seeds of {args.conf.name}, one epoch each, {args.threads} thread(s), "
          f"{env.device}: seed batch / one after another = "
          f"{med['seed batch'] / med['one after another']:.2f}x")  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def processes(args: argparse.Namespace, conf: Path, fbank: Path, ali: Path, work: Path) -> None:
    seeds = [str(s) for s in range(1, args.seeds + 1)]
    if args.seeds % args.jobs:
        sys.exit(f"--seeds {args.seeds} must be a multiple of --jobs {args.jobs}")
    per = args.seeds // args.jobs
    base = [sys.executable, "-m", "apm.bin.train_xvector", "--config", str(conf),
            "--ali-dir", str(ali), "--device", args.device, "--resume", "false"]  # fmt: skip

    def separate(out: Path) -> list[list[str]]:
        return [[*base, "--seed", s, str(fbank), str(out / s)] for s in seeds]

    def batched(out: Path) -> list[list[str]]:
        groups = [seeds[i : i + per] for i in range(0, len(seeds), per)]
        return [[*base, "--seeds", " ".join(g), str(fbank), *(str(out / s) for s in g)]
                for g in groups]  # fmt: skip

    ways = {"separate processes": separate, "seed batches": batched}
    walls: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(args.rounds):
        for name, commands in ways.items():
            out = work / f"{name.replace(' ', '_')}{r}"
            t = time.perf_counter()
            run_at_most(commands(out), args.jobs)
            walls[name].append(time.perf_counter() - t)
            print(f"round {r}: {name:18s} {walls[name][-1]:7.1f} s wall, "
                  f"{3600 * args.seeds / walls[name][-1]:6.1f} trainings/h", flush=True)  # fmt: skip
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"{args.seeds} trainings of {args.conf.name} ({args.epochs} epoch(s) each), "
          f"{args.jobs} processes at a time: trainings/h seed batches / separate processes = "
          f"{med['separate processes'] / med['seed batches']:.2f}x")  # fmt: skip


def run_at_most(commands: list[list[str]], jobs: int) -> None:
    """Run `commands`, `jobs` at a time (as xargs -P); stop on the first failure."""
    waiting, running = list(commands), []
    while waiting or running:
        while waiting and len(running) < jobs:
            running.append(subprocess.Popen(waiting.pop(0), stdout=subprocess.DEVNULL))
        for p in list(running):
            if p.poll() is not None:
                running.remove(p)
                if p.returncode:
                    sys.exit(f"a training failed (exit {p.returncode}): {' '.join(p.args)}")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", type=Path, default=RECIPE_CONF, help="system config")
    parser.add_argument("--seeds", type=int, default=4, help="trainings (seeds 1..S)")
    parser.add_argument("--fbank-dir", type=Path, help="training set (default: a toy corpus)")
    parser.add_argument("--ali-dir", type=Path, help="its alignments")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--processes", action="store_true", help="whole trainings as processes")
    parser.add_argument("--jobs", type=int, default=2, help="--processes: processes at a time")
    parser.add_argument("--epochs", type=int, default=1, help="--processes: epochs per training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        conf = epoch_config(args.conf, args.epochs, work)
        fbank, ali = args.fbank_dir, args.ali_dir
        if fbank is None:
            toy = make_toy_corpus(work / "toy", num_langs=6, utts_per_lang=40, frames=(320, 800),
                                  feat_dim=40)  # fmt: skip
            fbank, ali = toy.fbank_dir, toy.ali_dir
        if args.processes:
            processes(args, conf, fbank, ali, work)
        else:
            in_process(args, conf, fbank, ali)


if __name__ == "__main__":
    main()
