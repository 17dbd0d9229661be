"""Benchmark mini-OLR synthesis: wall time, audio hours and real-time factor per corpus size.

    .venv/bin/python local/bench_corpus.py [--size tiny|mini|full] [--nj 2]

Builds the corpus into a temporary directory (deleted afterwards) and prints measured figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# The repository, and the OLR recipe's local/ where mini-OLR lives (as egs/olr/path.sh does).
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "egs" / "olr" / "local")]

from mini_olr.build import make_mini_olr  # noqa: E402

from apm.utils.log import setup_logging  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="mini", help="corpus size to build")
    p.add_argument("--nj", type=int, default=2, help="parallel synthesis processes")
    p.add_argument("--seed", type=int, default=777)
    args = p.parse_args()
    setup_logging()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        stats = make_mini_olr(os.path.join(tmp, "data"), args.size, seed=args.seed, nj=args.nj)
        wall = time.perf_counter() - start
    hours = sum(s["hours"] for s in stats["sets"].values())
    utts = sum(s["utterances"] for s in stats["sets"].values())
    print(f"size={args.size} nj={args.nj} cores={os.cpu_count()}")
    print(f"utterances: {utts}  audio: {hours:.3f} h  wall: {wall:.1f} s")
    print(f"speed: {hours * 3600 / wall:.0f}x real time, {utts / wall:.1f} utt/s")


if __name__ == "__main__":
    main()
