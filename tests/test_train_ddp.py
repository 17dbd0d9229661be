"""steps/train_xvector.sh: DDP under torchrun (2 CPU processes, gloo) follows one process."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from apm.train.config import resolve_config
from apm.train.job import TrainJob, run_training
from apm.train.toy import make_toy_corpus, toy_config


@pytest.mark.slow
def test_two_process_ddp_follows_single_process(tmp_path, repo_root, shell_env):
    toy = make_toy_corpus(tmp_path / "toy", num_langs=3, utts_per_lang=16)
    # `batch_size` is global: each process takes every other chunk of a 32-chunk batch.
    raw = toy_config(epochs=3, batch_size=32)
    conf = tmp_path / "toy.yaml"
    conf.write_text(yaml.safe_dump(raw))
    run_training(
        TrainJob(resolve_config(raw, "toy", seed=5), toy.fbank_dir, tmp_path / "one", toy.ali_dir)
    )
    cmd = [
        str(repo_root / "steps/train_xvector.sh"),
        "--config",
        str(conf),
        "--seed",
        "5",
        "--ngpu",
        "2",
        "--ali-dir",
        str(toy.ali_dir),
        str(toy.fbank_dir),
        str(tmp_path / "two"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=shell_env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    curves = {}
    for name in ("one", "two"):
        lines = (tmp_path / name / "train_log.jsonl").read_text().splitlines()
        curves[name] = [json.loads(line)["train"]["loss"] for line in lines]
    assert len(curves["two"]) == 3 and (tmp_path / "two" / "final.pt").is_file()
    assert curves["two"][-1] < 0.6 * curves["two"][0]
    # BatchNorm statistics are per process (16 chunks instead of 32): close, not equal.
    for one, two in zip(curves["one"], curves["two"], strict=True):
        assert abs(one - two) < 0.15 * one, curves
    assert "process 1 of 2" not in r.stderr  # only rank 0 logs info lines
