"""Benchmark of stage 2's feature store: size, lilcom's rounding, random-access reads.

Runs stage 2 on one set's stage-1 manifests (default: mini-OLR's train set of the main
checkout, read only) into a temporary directory, with the Kaldi copy, and rebuilds the old
layout (one lhotse numpy file per cut) from the same matrices. Prints:
 - MB per hour of audio of the features: lilcom store alone, with the Kaldi copy, and the old
   numpy files + Kaldi copy (apparent size; disk use, whole blocks, in brackets);
 - lilcom's error against the float32 fbank recomputed from the audio, for --exact-utts cuts;
 - random-access read throughput in frames/s (page cache warm: all files were just written,
   lhotse's reader cache off as by default): whole utterances in random order, and random
   --window-frame windows (lilcom reads only the chunks a window needs; the others read the
   whole matrix);
 - with --system and --system-fbank (a set whose features are float32, e.g. an old-layout
   set): the effect of the lilcom rounding on that system's x-vectors and language scores.

    .venv/bin/python local/bench_feature_store.py [--manifests DIR] [--set train] [--nj 2] \\
        [--system egs/olr/exp/apm_am --system-fbank egs/olr/data/fbank/task_full]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from lhotse.features.compression import lilcom_compress_chunked
from lhotse.features.io import LilcomChunkyWriter, NumpyFilesWriter, get_lilcom_module
from lhotse.utils import fastcopy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apm.extract.xvectors import embed, load_system  # noqa: E402
from apm.features.fbank import STORE_TICK_POWER as TICK_POWER  # noqa: E402
from apm.features.fbank import fbank_and_vad, load_feature_config, make_extractor  # noqa: E402
from apm.features.pipeline import make_fbank  # noqa: E402
from apm.features.readers import (  # noqa: E402
    load_cut_features,
    load_feats,
    normalize_voiced,
    read_cuts,
    read_scp,
    voiced_mask,
)
from apm.nnet import checkpoint  # noqa: E402
from apm.utils.log import setup_logging  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAIN_RECIPE = Path("/work/main/egs/olr")
MB = 1e6


def sizes(paths: list[Path]) -> tuple[float, float]:
    """(apparent bytes, bytes of disk blocks) of `paths`."""
    stats = [p.stat() for p in paths]
    return sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats)


def report_sizes(set_dir: Path, old_dir: Path, hours: float) -> None:
    store = sizes(sorted((set_dir / "storage").glob("*.lca")))
    kaldi = sizes(sorted((set_dir / "jobs").glob("feats.*.ark")))
    numpy = sizes(sorted(old_dir.rglob("*.npy")))
    rest = sizes([p for p in set_dir.rglob("*") if p.is_file() and "feats." not in p.name])
    print(f"features of {hours:.3f} h of audio, MB per hour (disk use in brackets):")
    for name, (size, disk) in [
        ("lilcom store alone", store),
        ("lilcom store + Kaldi copy", (store[0] + kaldi[0], store[1] + kaldi[1])),
        ("old: numpy files + Kaldi copy", (numpy[0] + kaldi[0], numpy[1] + kaldi[1])),
        ("  of which the Kaldi copy", kaldi),
        ("cuts, vad.scp/ark, stats", rest),
    ]:
        print(f"  {name:<32} {size / MB / hours:7.1f} MB/h ({disk / MB / hours:7.1f})")


def report_rounding(cuts: list, cfg) -> None:
    """lilcom's error against the float32 fbank recomputed from the audio."""
    extractor = make_extractor(cfg)
    err, ref = [], []
    for cut in cuts:
        exact, _ = fbank_and_vad(cut.load_audio()[0], cut.sampling_rate, extractor, cfg.vad, cut.id)
        err.append((cut.load_features() - exact).ravel())
        ref.append(exact)
    err, ref = np.concatenate(err), np.concatenate(ref)
    rms, spread = float(np.sqrt(np.mean(err**2))), float(ref.std(axis=0).mean())
    print(
        f"lilcom rounding (tick 2^{TICK_POWER}) over {len(cuts)} cuts, {len(ref)} frames: "
        f"max |error| {np.abs(err).max():.4f}, RMS {rms:.4f}, mean |error| "
        f"{np.abs(err).mean():.4f}; per-bin std of the features {spread:.2f} "
        f"(SNR {20 * np.log10(spread / rms):.1f} dB)"
    )


def throughput(name: str, items: list, read: Callable[[object], np.ndarray]) -> None:
    start, frames = time.perf_counter(), 0
    for item in items:
        frames += len(read(item))
    wall = time.perf_counter() - start
    print(f"  {name:<44} {frames / wall:12.0f} frames/s ({len(items)} reads, {wall:.2f} s)")


def report_reads(cuts: list, old_cuts: dict, kaldi, window: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    order = [cuts[i] for i in rng.permutation(len(cuts))]
    print("random-access reads, whole utterances in random order:")
    throughput("lilcom store (cut.load_features)", order, lambda c: c.load_features())
    throughput("Kaldi copy (kaldiio)", order, lambda c: kaldi[c.id])
    throughput(
        "old numpy files (cut.load_features)", order, lambda c: old_cuts[c.id].load_features()
    )
    long = [c for c in order if c.num_frames > window]
    starts = {c.id: int(rng.integers(0, c.num_frames - window)) for c in long}
    seconds = window / 100  # 10 ms frames

    def part(cut):
        return cut.truncate(offset=starts[cut.id] / 100, duration=seconds)

    print(f"random {window}-frame windows of {len(long)} utterances:")
    throughput("lilcom store (reads the chunks it needs)", long, lambda c: part(c).load_features())
    throughput(
        "Kaldi copy (whole matrix, sliced)", long, lambda c: kaldi[c.id][starts[c.id] :][:window]
    )
    throughput(
        "old numpy files (whole matrix, sliced)",
        long,
        lambda c: part(old_cuts[c.id]).load_features(),
    )


def lilcom_round_trip(feats: np.ndarray) -> np.ndarray:
    """What the store gives back for `feats`: LilcomChunkyWriter's compression, decoded as
    its reader does. (lilcom rounds its input in place: compress a copy.)"""
    chunks = lilcom_compress_chunked(
        feats.copy(), tick_power=TICK_POWER, chunk_size=LilcomChunkyWriter.CHUNK_SIZE
    )
    lilcom = get_lilcom_module()
    return np.concatenate([lilcom.decompress(c) for c in chunks]).astype(np.float32)


def report_system(system_dir: Path, fbank: Path, utts: int) -> None:
    """x-vectors and scores of `utts` cuts from float32 features vs their lilcom rounding."""
    system = load_system(checkpoint.load(system_dir / "final.pt"), torch.device("cpu"))
    cmn, min_voiced = system.config["train"]["cmn"], system.config["extract"]["min_voiced_frames"]
    vad = read_scp(fbank / "vad.scp", "vad")
    cuts = sorted(read_cuts(fbank).to_eager(), key=lambda c: c.id)[:utts]
    cos, logit_diff, same = [], [], 0
    for cut in cuts:
        exact = load_cut_features(cut)
        keep = voiced_mask(cut.id, vad, len(exact))
        a = embed(system, normalize_voiced(exact, keep, cmn, min_voiced)[0])
        b = embed(system, normalize_voiced(lilcom_round_trip(exact), keep, cmn, min_voiced)[0])
        (xa, la), (xb, lb) = a, b
        cos.append(float(xa @ xb / np.linalg.norm(xa) / np.linalg.norm(xb)))
        logit_diff.append(float(np.abs(la - lb).max()))
        same += int(la.argmax() == lb.argmax())
    print(
        f"{system_dir.name} on {len(cuts)} cuts of {fbank.name}, float32 vs lilcom features: "
        f"x-vector 1 - cosine mean {1 - np.mean(cos):.2e}, max {1 - np.min(cos):.2e}; "
        f"largest logit change {np.max(logit_diff):.4f}; same top language {same}/{len(cuts)}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--manifests", type=Path, default=MAIN_RECIPE / "data/manifests")
    p.add_argument("--set", default="train", help="set under --manifests")
    p.add_argument("--nj", type=int, default=2, help="stage 2 jobs")
    p.add_argument("--exact-utts", type=int, default=200, help="cuts compared with float32")
    p.add_argument("--window", type=int, default=200, help="frames per random window read")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system", type=Path, default=None, help="trained system dir (final.pt)")
    p.add_argument("--system-fbank", type=Path, default=None, help="float32 feature set")
    p.add_argument("--system-utts", type=int, default=300)
    p.add_argument(
        "--tmp", type=Path, default=None, help="work directory (default: a temporary one)"
    )
    args = p.parse_args()
    setup_logging()
    torch.set_num_threads(1)
    cfg = load_feature_config(REPO / "egs/olr/conf/fbank.yaml")
    manifests = args.manifests.resolve()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        (summary,) = make_fbank(
            manifests, tmp / "fbank", [args.set], cfg, nj=args.nj, kaldi_copy=True
        )
        print(
            f"stage 2 with the Kaldi copy: {summary.line()} ({time.perf_counter() - start:.1f} s)"
        )
        set_dir = tmp / "fbank" / args.set
        cuts = list(read_cuts(set_dir).to_eager())
        old_cuts = {}
        with NumpyFilesWriter(tmp / "old/storage") as writer:  # the layout before the store
            for cut in cuts:
                key = writer.write(cut.id, cut.load_features())
                manifest = fastcopy(
                    cut.features,
                    storage_type=writer.name,
                    storage_path=str(writer.storage_path),
                    storage_key=key,
                )
                old_cuts[cut.id] = fastcopy(cut, features=manifest)
        report_sizes(set_dir, tmp / "old", summary.hours)
        rng = np.random.default_rng(args.seed)
        picked = rng.choice(len(cuts), min(args.exact_utts, len(cuts)), replace=False)
        report_rounding([cuts[i] for i in sorted(picked)], cfg)
        report_reads(cuts, old_cuts, load_feats(set_dir), args.window, args.seed)
    if args.system is not None:
        system, fbank = args.system.resolve(), args.system_fbank.resolve()
        os.chdir(MAIN_RECIPE if fbank.is_relative_to(MAIN_RECIPE) else Path.cwd())
        report_system(system, fbank, args.system_utts)


if __name__ == "__main__":
    main()
