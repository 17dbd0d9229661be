"""apm.nnet.checkpoint.save: atomic, and a full disk is a clear message naming the file."""

from __future__ import annotations

import contextlib
import errno

import pytest
import torch

from apm.bin.cli import describe_oserror
from apm.nnet import checkpoint


def test_save_round_trips(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    checkpoint.save(tmp_path / "epoch_3.pt", state)
    assert torch.equal(checkpoint.load(tmp_path / "epoch_3.pt")["model"]["w"], state["model"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_3.pt"]


def test_full_disk_names_the_checkpoint_and_the_cause(tmp_path, monkeypatch):
    @contextlib.contextmanager
    def full_disk(path, mode="w", **kwargs):  # every write fails as on a full disk
        with open("/dev/full", mode) as f:
            yield f
            f.flush()

    monkeypatch.setattr(checkpoint, "atomic_write", full_disk)
    target = tmp_path / "checkpoints/epoch_1.pt"
    with pytest.raises(OSError) as e:
        checkpoint.save(target, {"w": torch.zeros(1000)})
    assert e.value.errno == errno.ENOSPC
    assert describe_oserror(e.value) == f"cannot write {target}: No space left on device"
    assert not target.exists()
