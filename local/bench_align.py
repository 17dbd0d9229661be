#!/usr/bin/env python
"""Benchmark stage 3: PocketSphinx all-phone throughput, and warp vs decode for speed copies.

    .venv/bin/python local/bench_align.py [--fbank-dir DIR] [--oracle-dir DIR] [--seconds 60]

Part 1 decodes about `--seconds` of the set's original (not speed-perturbed) cuts with the
stage-3 code path (`--nj` processes) and prints audio seconds, wall seconds, jobs and x real
time per core (audio / (wall x jobs)), plus the decoder-CPU figure, which is what the machine
load does not distort. Part 2 labels 0.9/1.1 speed-perturbed copies of a few cuts both ways
(decode the copy; time-warp the original's labels) and prints the time each takes and, with an
oracle, the NMI between each and the time-warped oracle labels; it also checks the frame
delay that puts PocketSphinx's frames on ours. `--sweep` compares decoder settings.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from apm.align.config import load_align_config  # noqa: E402
from apm.align.decode import JobSummary, align_cut, cut_frames, decode_cuts  # noqa: E402
from apm.align.labels import warp_labels  # noqa: E402
from apm.align.pipeline import oracle_source  # noqa: E402
from apm.align.sphinx import FRAME_DELAY, SphinxAligner  # noqa: E402
from apm.features.readers import perturbed_source, read_cuts  # noqa: E402

DATA = REPO / "egs/olr/data"


def pick(cuts: list, seconds: float, seed: int) -> list:
    originals = [c for c in cuts if perturbed_source(c.id) is None]
    random.Random(seed).shuffle(originals)
    chosen, total = [], 0.0
    for cut in originals:
        if total >= seconds:
            break
        chosen.append(cut)
        total += cut.duration
    return sorted(chosen, key=lambda c: c.id)


def throughput(cuts: list, cfg, nj: int) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        labels, summaries = decode_cuts(cuts, cfg, Path(tmp), nj)
        wall = time.perf_counter() - start
    audio = sum(s.audio_seconds for s in summaries)
    cpu = sum(s.cpu_seconds for s in summaries)
    jobs = len(summaries)
    print(
        f"throughput: {len(cuts)} utts, audio {audio:.1f} s, wall {wall:.1f} s (incl. process "
        f"start), jobs {jobs}, xRT/core {audio / (wall * jobs):.1f} "
        f"(decoder CPU: {audio / cpu:.1f}x real time per core)"
    )
    return labels


def delay_check(cuts: list, labels: dict[str, np.ndarray], oracle) -> None:
    """NMI vs the oracle with the decoder's frames delayed by 0, 1 (ours) and 2 frames."""
    truth = np.concatenate([oracle.for_cut(c) for c in cuts])
    for delay in (0, FRAME_DELAY, 2):
        moved = []
        for c in cuts:
            x = labels[c.id]
            d = delay - FRAME_DELAY
            moved.append(
                np.concatenate([x[:1].repeat(d), x[: len(x) - d]])
                if d >= 0
                else np.concatenate([x[-d:], x[-1:].repeat(-d)])
            )
        nmi = normalized_mutual_info_score(truth, np.concatenate(moved))
        print(
            f"  frame delay {delay}: NMI vs oracle {nmi:.4f}{' (used)' if delay == FRAME_DELAY else ''}"
        )


def sweep(cuts: list, cfg, oracle) -> None:
    """Decoder CPU speed and oracle NMI for a few settings around the default (one process)."""
    settings = [
        {"lw": 6.5, "beam": 1e-48, "pbeam": 1e-48},  # PocketSphinx's own defaults
        {"lw": 2.0, "beam": 1e-20, "pbeam": 1e-20},  # CMUSphinx's suggested all-phone setting
        {"lw": 1.5, "beam": 1e-20, "pbeam": 1e-20},
        {"lw": 1.5, "beam": 1e-9, "pbeam": 1e-9},
        {"lw": 1.5, "beam": 1e-6, "pbeam": 1e-6},
        {"lw": 1.0, "beam": 1e-9, "pbeam": 1e-9},
    ]
    truth = np.concatenate([oracle.for_cut(c) for c in cuts]) if oracle else None
    for setting in settings:
        options = {**cfg.pocketsphinx, **setting}
        aligner = SphinxAligner(options)
        summary = JobSummary("")
        start = time.process_time()
        labels = [align_cut(aligner, c, cfg, summary) for c in cuts]
        cpu = time.process_time() - start
        flat = np.concatenate(labels)
        nmi = f", NMI {normalized_mutual_info_score(truth, flat):.4f}" if truth is not None else ""
        print(
            f"  {setting}: {summary.audio_seconds / cpu:5.1f}x RT/CPU, "
            f"SIL {np.mean(flat == 0):.1%}{nmi}"
        )


def speed_copies(cuts: list, all_ids: dict, factors=(0.9, 1.1)) -> list[tuple]:
    """(original, copy, factor): the set's own copies if it has them, else made here."""
    out = []
    for cut in cuts:
        for f in factors:
            copy = all_ids.get(f"{cut.id}_sp{f}") or cut.drop_features().perturb_speed(f)
            out.append((cut, copy, f))
    return out


def warp_vs_decode(cuts: list, all_ids: dict, cfg, oracle) -> None:
    aligner = SphinxAligner(cfg.pocketsphinx)
    originals = {c.id: align_cut(aligner, c, cfg, JobSummary("")) for c in cuts}
    rows = {"decode": ([], 0.0), "warp": ([], 0.0)}
    audio = 0.0
    truth = []
    for cut, copy, factor in speed_copies(cuts, all_ids):
        audio += copy.duration
        t0 = time.perf_counter()
        decoded = align_cut(aligner, copy, cfg, JobSummary(""))
        t1 = time.perf_counter()
        warped = warp_labels(originals[cut.id], factor, cut_frames(copy), copy.id)
        t2 = time.perf_counter()
        rows["decode"] = (rows["decode"][0] + [decoded], rows["decode"][1] + t1 - t0)
        rows["warp"] = (rows["warp"][0] + [warped], rows["warp"][1] + t2 - t1)
        if oracle is not None:
            truth.append(oracle.for_cut(copy))
    print(
        f"speed copies: {len(rows['warp'][0])} copies (0.9/1.1) of {len(cuts)} utts, {audio:.1f} s"
    )
    for mode, (labels, seconds) in rows.items():
        nmi = ""
        if oracle is not None and all(t is not None for t in truth):
            o, v = np.concatenate(truth), np.concatenate(labels)
            nmi = f", NMI vs warped oracle {normalized_mutual_info_score(o, v):.4f}"
        print(f"  {mode:6s}: {seconds:7.3f} s ({audio / max(seconds, 1e-9):9.1f}x real time){nmi}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--fbank-dir", default=str(DATA / "fbank/train"))
    p.add_argument("--oracle-dir", default=str(DATA / "oracle_ali/train"))
    p.add_argument("--config", default=str(REPO / "egs/olr/conf/align.yaml"))
    p.add_argument("--seconds", type=float, default=60.0, help="audio for the throughput part")
    p.add_argument("--nj", type=int, default=2)
    p.add_argument("--copies-of", type=int, default=8, help="utterances for the speed part")
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--sweep", action="store_true", help="also compare decoder settings")
    args = p.parse_args()
    if not (Path(args.fbank_dir) / "cuts.jsonl.gz").is_file():
        sys.exit(f"{args.fbank_dir}: no cuts.jsonl.gz; run egs/olr/run.sh --stop-stage 2 first")
    cfg = load_align_config(args.config)
    cuts = sorted(read_cuts(args.fbank_dir), key=lambda c: c.id)
    oracle = oracle_source(args.oracle_dir, cfg) if Path(args.oracle_dir).is_dir() else None
    print(
        f"data: {args.fbank_dir} ({len(cuts)} cuts); oracle: {args.oracle_dir if oracle else 'none'}"
    )
    print(f"decoder: {cfg.pocketsphinx}")
    chosen = pick(cuts, args.seconds, args.seed)
    labels = throughput(chosen, cfg, args.nj)
    if oracle is not None:
        delay_check(chosen, labels, oracle)
    warp_vs_decode(chosen[: args.copies_of], {c.id: c for c in cuts}, cfg, oracle)
    if args.sweep:
        print("decoder settings (same cuts, one process):")
        sweep(chosen, cfg, oracle)


if __name__ == "__main__":
    main()
