"""Export a training set (stage 2 cuts and features, their VAD and, with --ali-dir, the stage 3
phone labels) as lhotse Shar shards, for nodes without the feature store.

Train from the shards by passing their directory as the training set (stage 4,
`train.data: memory`: Shar is read sequentially and held in memory; batches and resume are
then exactly those of the feature store). With --to-kaldi, SOURCE is a Shar directory whose
vad/ali fields are written back as Kaldi OUT_DIR/vad.scp and ali.scp (interop).
"""

import argparse
import logging
from pathlib import Path

from apm.bin.cli import main
from apm.train.cuts import export_labels, export_shar, read_shar
from apm.train.data import labelled_cuts

log = logging.getLogger("export_shar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export_shar", description=__doc__)
    p.add_argument("--ali-dir", type=Path, default=None, help="stage 3 output: ali.scp")
    p.add_argument("--shard-size", type=int, default=1000, help="cuts per shard")
    p.add_argument(
        "--to-kaldi",
        action="store_true",
        help="read the Shar shards in SOURCE and write OUT/vad.scp and OUT/ali.scp",
    )
    p.add_argument("source", type=Path, help="stage 2 output of the set (or Shar shards)")
    p.add_argument("out_dir", type=Path, help="output directory of the shards (or scp files)")
    return p


def run(args: argparse.Namespace) -> None:
    if args.to_kaldi:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("vad", "ali"):
            cuts = (c for c in read_shar(args.source) if c.custom and name in c.custom)
            count = export_labels(cuts, name, args.out_dir / f"{name}.ark")
            log.info("%s: %d entries", args.out_dir / f"{name}.scp", count)
        return
    written = export_shar(labelled_cuts(args.source, args.ali_dir), args.out_dir, args.shard_size)
    log.info("%s: %d shards", args.out_dir, len(written))


if __name__ == "__main__":
    main(build_parser(), run)
