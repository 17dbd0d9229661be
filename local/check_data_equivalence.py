#!/usr/bin/env python
"""Check that this checkout's training data gives what an older commit's memory path gave:
the same batches and the same trained weights (issue 22: the committed results stay valid).

On a synthetic toy corpus (apm.train.toy), for --before REF (its `apm/` extracted with
`git archive`) and this checkout, each in its own process:
 1. every training batch of epochs 0-1 (plain and with SpecAugment, for 1 process and each
    rank of 2) and every validation batch: REF's memory path against this checkout with
    `train.data` memory and stream; every tensor must be equal (values and dtype);
 2. `final.pt` of a 2-epoch training with egs/olr/conf/apm_am.yaml: REF (memory, no
    DataLoader workers) against this checkout with memory / 0 workers and stream / 2 workers;
    every tensor must be equal.
Exits 1 on the first difference.

    .venv/bin/python local/check_data_equivalence.py --before a81496a [--work /tmp/apm_equiv]
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BATCHES = r"""
import pickle, sys
from apm.train.batches import ChunkBatches, plan_epoch, validation_batches
from apm.train.config import resolve_config
from apm.train.data import load_corpus, split_validation
from apm.train.toy import make_toy_corpus, toy_config
out, work, data, spec = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
toy = make_toy_corpus(work, num_langs=3, utts_per_lang=12)
raw = toy_config(batch_size=8, specaugment={} if spec else None)
cfg = resolve_config(raw, "toy", seed=3)["train"]
new = "cache" in load_corpus.__code__.co_varnames
kw = {"cache": data == "memory"} if new else {}
corpus = load_corpus(toy.fbank_dir, toy.ali_dir, cmn="utterance", min_utt_frames=40, **kw)
train, valid = split_validation(corpus, 0.2, 3)
def arrays(b):
    return {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in b.items()}
batches = []
for epoch in range(2):
    plan = plan_epoch(corpus, train, cfg, 3, epoch)
    for world in (1, 2):
        for rank in range(world):
            d = ChunkBatches(corpus, plan, cfg, 3, epoch, rank, world)
            batches += [arrays(d[i]) for i in range(len(d))]
batches += [arrays(b) for b in validation_batches(corpus, valid, cfg)]
pickle.dump({"ids": corpus.ids, "batches": batches}, open(out, "wb"))
"""

TRAIN = r"""
import sys
from pathlib import Path
from apm.train.config import load_system_config
from apm.train.job import TrainJob, run_training
from apm.train.toy import make_toy_corpus
out, work, data, workers, conf = sys.argv[1:6]
toy = make_toy_corpus(work, num_langs=3, utts_per_lang=12)
cfg = load_system_config(conf, seed=1)
cfg["train"].update(epochs=2, average_last=2, threads=1, num_workers=int(workers), data=data)
run_training(TrainJob(cfg, toy.fbank_dir, Path(out), toy.ali_dir, resume=False))
"""


def python(code: Path, script: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=code,
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode:
        raise SystemExit(f"{code}: failed\n{r.stderr[-3000:]}")


def check_batches(old: Path, work: Path) -> None:
    import numpy as np

    for spec in ("0", "1"):
        python(old, BATCHES, str(work / "old.pkl"), str(work / "toy"), "memory", spec)
        ref = pickle.loads((work / "old.pkl").read_bytes())
        for data in ("memory", "stream"):
            python(REPO, BATCHES, str(work / "new.pkl"), str(work / "toy"), data, spec)
            got = pickle.loads((work / "new.pkl").read_bytes())
            if got["ids"] != ref["ids"] or len(got["batches"]) != len(ref["batches"]):
                raise SystemExit(f"{data}: other utterances or batch count than the old path")
            for n, (a, b) in enumerate(zip(ref["batches"], got["batches"], strict=True)):
                for key in a:
                    same = (
                        isinstance(b.get(key), np.ndarray)
                        and a[key].dtype == b[key].dtype
                        and np.array_equal(a[key], b[key])
                        if isinstance(a[key], np.ndarray)
                        else a[key] == b.get(key)
                    )
                    if not same or a.keys() != b.keys():
                        raise SystemExit(f"{data}, specaugment {spec}: batch {n} '{key}' differs")
            print(f"batches, specaugment {'on' if spec == '1' else 'off'}: {len(ref['batches'])} "
                  f"batches of train.data {data} identical to the old memory path")  # fmt: skip


def check_weights(old: Path, work: Path) -> None:
    import torch

    conf = str(REPO / "egs/olr/conf/apm_am.yaml")
    python(old, TRAIN, str(work / "w_old"), str(work / "toy"), "memory", "0", conf)
    ref = torch.load(work / "w_old/final.pt", weights_only=False)
    for data, workers in (("memory", "0"), ("stream", "2")):
        out = work / f"w_{data}"
        python(REPO, TRAIN, str(out), str(work / "toy"), data, workers, conf)
        got = torch.load(out / "final.pt", weights_only=False)
        for part in ("model", "crit"):
            for key, value in ref[part].items():
                if not torch.equal(value, got[part][key]):
                    raise SystemExit(f"final.pt ({data}, {workers} workers): {part}.{key} differs")
        print(f"final.pt: train.data {data}, {workers} DataLoader workers: all "
              f"{len(ref['model']) + len(ref['crit'])} tensors identical to the old memory path")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--before", required=True, help="git commit of the reference (old) code")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: temp)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "apm"],
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        check_batches(old, work)
        check_weights(old, work)


if __name__ == "__main__":
    main()
