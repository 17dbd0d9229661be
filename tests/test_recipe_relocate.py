"""A recipe directory moved between stages keeps working: paths inside generated files
(feats.scp, vad.scp, lhotse feature storage, ali.scp, xvector.scp) are relative to it."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from apm.data.toy import make_toy_corpus

pytestmark = pytest.mark.slow


def _recipe_copy(repo_root: Path, dest: Path) -> Path:
    """`dest/egs/olr`, a copy of the recipe next to links to the repository's code."""
    for name in ("apm", "steps", "utils", "path.sh", ".venv"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).symlink_to(repo_root / name)
    recipe = dest / "egs/olr"
    shutil.copytree(
        repo_root / "egs/olr", recipe, symlinks=True, ignore=shutil.ignore_patterns("data", "exp")
    )
    cfg = yaml.safe_load((recipe / "conf/am.yaml").read_text())
    cfg["model"].update(channels=32, stats_channels=64, embed_dim=32, phone_channels=32)
    cfg["train"].update(epochs=2, batch_size=16, chunk_min_frames=80, chunk_max_frames=120)
    cfg["train"].update(min_utt_frames=40, average_last=1, bn_recalibration_batches=5)
    (recipe / "conf_tiny").mkdir()
    (recipe / "conf_tiny/am.yaml").write_text(yaml.safe_dump(cfg))
    return recipe


def _run(recipe: Path, olr: Path, *options: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    cmd = [
        "./run.sh", "--olr-root", str(olr), "--train-set", "train", "--test-sets", "test",
        "--systems", "am", "--system-conf-dir", "conf_tiny", *options,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=recipe, env=env, capture_output=True, text=True, timeout=600)


def _text(path: Path) -> str:
    return gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text()


def test_recipe_directory_moved_after_stage_3_runs_stages_4_to_7(repo_root, tmp_path):
    olr = make_toy_corpus(tmp_path / "olr", {"train": 3, "test": 1}, seconds=(1.5, 2.0))
    recipe = _recipe_copy(repo_root, tmp_path / "a")
    committed = (repo_root / "egs/olr/RESULTS.md").read_bytes()
    r = _run(recipe, olr, "--stop-stage", "3")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = recipe / "data"
    generated = [data / "fbank/train/vad.scp", data / "fbank/test/vad.scp",
                 data / "fbank/train/cuts.jsonl.gz", data / "ali/train/ali.scp"]  # fmt: skip
    for path in generated:
        assert str(tmp_path / "a") not in _text(path), f"{path} names the recipe absolutely"
    assert "data/fbank/train/storage" in _text(data / "fbank/train/cuts.jsonl.gz")

    moved = tmp_path / "b/egs/olr"
    (tmp_path / "a").rename(tmp_path / "b")
    r = _run(moved, olr, "--stage", "4")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = moved / "exp"
    assert "test" in (exp / "am/results.md").read_text()
    assert "| am |" in (exp / "RESULTS.md").read_text(), "--results defaults to <exp>/RESULTS.md"
    assert (moved / "RESULTS.md").read_bytes() == committed, "the tracked table is left alone"
    scp = (exp / "am/xvectors/test/xvector.scp").read_text()
    assert scp.split()[1].startswith("exp/am/xvectors/test/xvector.ark:"), scp
