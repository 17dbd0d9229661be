"""Shared pytest fixtures, and the OLR recipe's own Python code (egs/olr/local: mini_olr) on
sys.path, as egs/olr/path.sh puts it on PYTHONPATH for the recipe's scripts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

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
