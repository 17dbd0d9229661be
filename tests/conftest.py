"""Shared pytest fixtures, and the OLR recipe's own Python code (egs/olr/local: mini_olr) on
sys.path, as egs/olr/path.sh puts it on PYTHONPATH for the recipe's scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
OLR_LOCAL = REPO / "egs" / "olr" / "local"
if str(OLR_LOCAL) not in sys.path:
    sys.path.insert(0, str(OLR_LOCAL))


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def shell_env() -> dict[str, str]:
    """Environment for running the recipe's shell scripts and Python modules from tests (the
    test's venv; the repository and the OLR recipe's local/ on PYTHONPATH)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{OLR_LOCAL}"
    return env


TINY_SYSTEMS = ("apm_am", "am")


def recipe_env(**extra: str) -> dict[str, str]:
    """The environment of a recipe run from tests: the test's venv first on PATH."""
    return dict(os.environ, PATH=f"{REPO / '.venv/bin'}:{os.environ['PATH']}", **extra)


@dataclass(frozen=True)
class TinyRecipe:
    """One local run of egs/olr/run.sh, stages 0-7, on the tiny corpus with the recipe's
    systems shrunk for seconds. Tests read it and never change it (copy it first)."""

    root: Path
    cmd: tuple[str, ...]  # the run.sh command line that made it

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def exp(self) -> Path:
        return self.root / "exp"


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory) -> TinyRecipe:
    """The tiny recipe run shared by tests/test_recipe_e2e.py, test_identify.py and
    test_recipe_slurm.py (the local reference of the Slurm run)."""
    root = tmp_path_factory.mktemp("tiny_recipe")
    conf = root / "conf"
    conf.mkdir()
    for system in TINY_SYSTEMS:
        cfg = yaml.safe_load((REPO / "egs/olr/conf" / f"{system}.yaml").read_text())
        cfg["model"].update(channels=32, stats_channels=64, embed_dim=32, phone_channels=32)
        cfg["train"].update(epochs=2, batch_size=16, chunk_min_frames=80, chunk_max_frames=120)
        cfg["train"].update(min_utt_frames=40, average_last=1, bn_recalibration_batches=5)
        (conf / f"{system}.yaml").write_text(yaml.safe_dump(cfg))
    cmd = (
        str(REPO / "egs/olr/run.sh"),
        "--corpus-size", "tiny",
        "--data", str(root / "data"),
        "--exp", str(root / "exp"),
        "--results", str(root / "RESULTS.md"),
        "--system-conf-dir", str(conf),
        "--systems", " ".join(TINY_SYSTEMS),
    )  # fmt: skip
    env = recipe_env(OMP_NUM_THREADS="1")  # as the Slurm run's jobs get it
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return TinyRecipe(root, cmd)
