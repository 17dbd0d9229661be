"""apm.utils.log.progress: a tqdm bar on a terminal, a few log lines in files and pipes."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

from apm.utils import log as logmod
from apm.utils.log import LogProgress, progress

REPO = Path(__file__).resolve().parents[1]


def test_bar_on_a_terminal_only(monkeypatch):
    monkeypatch.delenv(logmod.PROGRESS_ENV, raising=False)
    monkeypatch.setattr(logmod, "_stderr_is_tty", lambda: True)
    bar = progress(range(3), desc="x")
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setattr(logmod, "_stderr_is_tty", lambda: False)
    assert isinstance(progress(range(3), desc="x"), LogProgress)
    monkeypatch.setenv(logmod.PROGRESS_ENV, "bar")
    bar = progress(range(3), desc="x")
    assert isinstance(bar, tqdm)
    bar.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(logmod.time, "monotonic", c)
    monkeypatch.setenv(logmod.PROGRESS_ENV, "log")
    return c


def test_log_lines_are_few_and_summarise(clock, caplog):
    caplog.set_level(logging.INFO)
    items = []
    for i in progress(range(1000), desc="align", unit="utt"):
        clock.now += 0.1  # 100 s in all
        items.append(i)
    assert items == list(range(1000))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines  # 25%, 50%, 75% (10 s apart or more) and the end
    assert lines[0].startswith("align: 250/1000 utt in 25.0 s (10.0 utt/s)")
    assert lines[-1] == "align: done, 1000/1000 utt in 100.0 s (10.0 utt/s)"


def test_fast_loops_log_only_the_end(clock, caplog):
    caplog.set_level(logging.INFO)
    with progress(total=50, desc="epoch 1/2", unit="batch", initial=0) as bar:
        for _ in range(50):
            clock.now += 0.01
            bar.update()
            bar.set_postfix(loss="1.234")
    assert [r.getMessage() for r in caplog.records] == [
        "epoch 1/2: done, 50/50 batch in 0.5 s (100.0 batch/s), loss=1.234"
    ]


def test_resume_and_disable(clock, caplog):
    caplog.set_level(logging.INFO)
    with progress(total=10, initial=4, desc="fbank", unit="cut") as bar:
        bar.update(6)
    for _ in progress(range(5), desc="quiet", disable=True):
        pass
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["fbank: resuming at 4/10 cut", "fbank: done, 10/10 cut in 0.0 s (- cut/s)"]


def test_a_loop_that_raises_is_stopped_not_done(clock, caplog):
    caplog.set_level(logging.INFO)
    with pytest.raises(ValueError):
        with progress(total=10, desc="train", unit="batch") as bar:
            bar.update(3)
            raise ValueError("nan loss")
    with pytest.raises(ValueError):
        for i in progress(range(10), desc="align", unit="utt"):
            if i == 4:
                raise ValueError("bad audio")
    for i in progress(range(10), desc="search", unit="utt"):
        if i == 2:
            break
    assert [r.getMessage() for r in caplog.records] == [
        "train: stopped at 3/10 batch in 0.0 s (- batch/s)",
        "align: stopped at 4/10 utt in 0.0 s (- utt/s)",
        "search: stopped at 2/10 utt in 0.0 s (- utt/s)",
    ]


def test_no_carriage_returns_in_a_pipe():
    code = "from apm.utils.log import progress, setup_logging\nsetup_logging()\n" + (
        "for _ in progress(range(20000), desc='loop'): pass\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert "\r" not in r.stderr and len(r.stderr.splitlines()) <= 5, r.stderr
    assert "loop: done, 20000/20000 it" in r.stderr


def test_every_call_site_uses_the_helper():
    """No module but apm/utils/log.py drives tqdm itself (its bars flood the stage logs)."""
    offenders = [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "apm").rglob("*.py"))
        if p.name != "log.py" and re.search(r"^\s*(from tqdm|import tqdm)", p.read_text(), re.M)
    ]
    assert offenders == []
