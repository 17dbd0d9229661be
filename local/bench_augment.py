"""Benchmark of on-the-fly augmentation: cuts/s of augmented fbank against reading the stored
features, on CPU, one thread.

Builds a toy corpus (tone bursts in noise, 16 kHz) of --minutes of audio, runs stages 1-2,
writes a tiny MUSAN/RIRS_NOISES (apm.features.augment.write_toy_sets), prepares it, then
times over every cut: (1) stored features (`load_cut_features`, what training reads today),
(2) each effect alone (noise, music, babble, reverb), (3) the mix a system would use
(prob 1, reverb_prob 0.25, all noise kinds).

    .venv/bin/python local/bench_augment.py [--minutes 3]
"""

from __future__ import annotations

import argparse
import os
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
from apm.features.augment import (  # noqa: E402
    KINDS,
    Augmenter,
    prepare_augment_sets,
    resolve_augment,
    write_toy_sets,
)
from apm.features.fbank import load_feature_config  # noqa: E402
from apm.features.pipeline import make_fbank  # noqa: E402
from apm.features.readers import load_cut_features  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "egs/olr/conf/fbank.yaml"


def timed(what: str, fn, cuts: list, audio: float) -> None:
    start, cpu = time.perf_counter(), time.process_time()
    for cut in cuts:
        fn(cut)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(
        f"{what:<34} {len(cuts) / wall:8.1f} cuts/s  wall {wall:6.2f} s  CPU {cpu:6.2f} s  "
        f"xRT/CPU-s {audio / cpu:7.0f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.0, help="audio to process")
    args = p.parse_args()
    torch.set_num_threads(1)
    features = load_feature_config(CONF)
    per_pair = max(1, round(args.minutes * 60 / 2.25 / 6))  # 2 speakers x 3 languages
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_toy_corpus(tmp / "olr", {"bench": per_pair}, seconds=(1.5, 3.0), seed=1)
        import_data_dirs(tmp / "olr", tmp / "data", ["bench"])
        make_manifests(tmp / "data", tmp / "manifests", ["bench"], nj=1)
        make_fbank(tmp / "manifests", tmp / "fbank", ["bench"], features, nj=1)
        sets = prepare_augment_sets(tmp / "augment", *write_toy_sets(tmp / "corpora"))
        cuts = list(CutSet.from_file(tmp / "fbank/bench/cuts.jsonl.gz"))
        audio = sum(c.duration for c in cuts)
        print(
            f"{len(cuts)} cuts, {audio:.1f} s of audio, {os.cpu_count()} CPUs visible, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        all_kinds = {k: {"manifest": str(sets[k])} for k in KINDS}
        timed("stored features (load_cut_features)", load_cut_features, cuts, audio)
        for effect in (*KINDS, "reverb"):
            raw = {"prob": 1.0, "rirs": str(sets["rirs"]), "reverb_prob": 1.0}
            if effect != "reverb":
                raw.update(reverb_prob=0.0, **{effect: all_kinds[effect]})
            aug = Augmenter(resolve_augment(raw), features, seed=0)
            timed(f"augmented: {effect}", aug.for_epoch(0), cuts, audio)
        raw = {"prob": 1.0, "reverb_prob": 0.25, "rirs": str(sets["rirs"]), **all_kinds}
        aug = Augmenter(resolve_augment(raw), features, seed=0)
        timed("augmented: mix (reverb 0.25)", aug.for_epoch(0), cuts, audio)


if __name__ == "__main__":
    main()
