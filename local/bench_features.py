"""Benchmark of stage 2: feature extraction speed in times real time per core.

Builds a toy corpus (tone bursts in noise, 16 kHz) of --minutes of audio, runs stage 1, then
measures (1) the kernel alone (fbank + VAD of in-memory audio, one thread) and (2) the whole
stage 2 (read wav, fbank, VAD, lhotse storage, ark/scp, merge) with --nj processes.
xRT/core = audio seconds / wall seconds / cores used; xRT/CPU-s = audio seconds / CPU seconds
spent (this process and its workers), the figure that stays fair on a shared, loaded machine.
Target: >= 300.

    .venv/bin/python local/bench_features.py [--minutes 10] [--nj 1 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from lhotse import CutSet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apm.data.import_dirs import import_data_dirs  # noqa: E402
from apm.data.manifests import make_manifests  # noqa: E402
from apm.data.toy import make_toy_corpus  # noqa: E402
from apm.features.fbank import FeatureConfig, fbank_and_vad, load_feature_config, make_extractor  # noqa: E402
from apm.features.pipeline import make_fbank  # noqa: E402
from apm.utils.log import setup_logging  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "egs/olr/conf/fbank.yaml"


def cpu_seconds() -> float:
    """CPU time of this process plus its finished (joined) child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def report(what: str, audio: float, wall: float, cpu: float, cores: int) -> None:
    print(
        f"{what:<30} audio {audio:7.1f} s  wall {wall:6.2f} s  CPU {cpu:6.2f} s  "
        f"cores {cores}  xRT/core {audio / wall / cores:6.0f}  xRT/CPU-s {audio / cpu:6.0f}"
    )


def bench_kernel(cuts, cfg: FeatureConfig) -> None:
    torch.set_num_threads(1)
    extractor = make_extractor(cfg)
    audio = [(c.id, c.load_audio()[0]) for c in cuts]
    start, cpu = time.perf_counter(), cpu_seconds()
    for utt, x in audio:
        fbank_and_vad(x, 16000, extractor, cfg.vad, utt)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    report("kernel (fbank+VAD, in memory)", sum(len(x) for _, x in audio) / 16000, wall, cpu, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="audio to process")
    p.add_argument("--nj", type=int, nargs="+", default=[1, 2], help="job counts to time")
    args = p.parse_args()
    setup_logging()
    cfg = load_feature_config(CONF)
    per_pair = max(1, round(args.minutes * 60 / 2.25 / 6))  # 2 speakers x 3 languages, ~2.25 s each
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_toy_corpus(tmp / "olr", {"bench": per_pair}, seconds=(1.5, 3.0), seed=1)
        import_data_dirs(tmp / "olr", tmp / "data", ["bench"])
        make_manifests(tmp / "data", tmp / "manifests", ["bench"], nj=max(args.nj))
        cuts = CutSet.from_file(tmp / "manifests/bench/cuts.jsonl.gz").to_eager()
        audio = sum(c.duration for c in cuts)
        print(
            f"{len(cuts)} utterances, {audio:.1f} s of audio, {os.cpu_count()} CPUs visible, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        bench_kernel(cuts, cfg)
        for nj in args.nj:
            start, cpu = time.perf_counter(), cpu_seconds()
            make_fbank(tmp / "manifests", tmp / f"fbank{nj}", ["bench"], cfg, nj=nj)
            wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            report(f"stage 2, --nj {nj}", audio, wall, cpu, nj)


if __name__ == "__main__":
    main()
