"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def shell_env() -> dict[str, str]:
    """Environment for running the recipe's shell scripts from tests (the test's venv)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    return env
