"""The whole recipe, stages 0-7, on the tiny synthesized corpus: every stage on real audio."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO

SYSTEMS = ("apm_am", "am")
TASKS = ("task_full", "task_short", "task_cross", "task_noisy", "task_open")


def _tiny_system_confs(repo_root: Path, dest: Path) -> None:
    """The recipe's own system configs with the network and schedule shrunk for seconds."""
    dest.mkdir()
    for system in SYSTEMS:
        cfg = yaml.safe_load((repo_root / "egs/olr/conf" / f"{system}.yaml").read_text())
        cfg["model"].update(channels=32, stats_channels=64, embed_dim=32, phone_channels=32)
        cfg["train"].update(epochs=2, batch_size=16, chunk_min_frames=80, chunk_max_frames=120)
        cfg["train"].update(min_utt_frames=40, average_last=1, bn_recalibration_batches=5)
        (dest / f"{system}.yaml").write_text(yaml.safe_dump(cfg))


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv/bin'}:{env['PATH']}"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_whole_recipe_on_tiny_corpus(tmp_path, repo_root):
    _tiny_system_confs(repo_root, tmp_path / "conf")
    cmd = [
        str(repo_root / "egs/olr/run.sh"),
        "--corpus-size", "tiny",
        "--data", str(tmp_path / "data"),
        "--exp", str(tmp_path / "exp"),
        "--results", str(tmp_path / "RESULTS.md"),
        "--system-conf-dir", str(tmp_path / "conf"),
        "--systems", " ".join(SYSTEMS),
    ]  # fmt: skip
    r = _run(cmd, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    data, exp = tmp_path / "data", tmp_path / "exp"
    assert (data / "ali/train/ali.scp").is_file() and (data / "ali/train/report.md").is_file()
    for system in SYSTEMS:
        sysdir = exp / system
        assert (sysdir / "final.pt").is_file() and (sysdir / "train_curves.png").is_file()
        for task in TASKS:
            assert (sysdir / "xvectors" / task / "xvector.scp").is_file()
            header = (sysdir / "scores" / f"{task}.score").read_text().splitlines()[0].split()
            assert header == (sysdir / "languages.txt").read_text().split()
        results = json.loads((sysdir / "results.json").read_text())
        assert json.dumps(results).count("cavg") >= len(TASKS)
    table = (tmp_path / "RESULTS.md").read_text()
    assert all(s in table for s in SYSTEMS) and all(t in table for t in TASKS)

    # A rerun finds every stage done and redoes nothing.
    r = _run(cmd, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("done before, skipping") >= 8
    assert "finished in" not in r.stdout

    # A broken input fails loudly with the stage, the log and the cause.
    shutil.rmtree(data / "fbank" / "train")
    r = _run(cmd + ["--stage", "3", "--stop-stage", "3", "--force", "true"], tmp_path)
    assert r.returncode != 0
    assert "stage 3 (align) failed" in r.stderr and "stage3.align.log" in r.stderr
