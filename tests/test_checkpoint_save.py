"""apm.nnet.checkpoint: save is atomic and a full disk is a clear message naming the file; load
reads every checkpoint the project writes with weights_only=True, and a damaged or unsafe file
is an ApmError naming it and how to write it again."""

from __future__ import annotations

import contextlib
import errno
import json
import random

import numpy as np
import pytest
import torch

from apm.bin.cli import describe_oserror
from apm.nnet import build_model, checkpoint
from apm.train.config import resolve_config
from apm.train.toy import toy_config
from apm.train.trainer import LrSchedule, rng_state, set_rng_state
from apm.utils import ApmError


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


def _training_state() -> tuple[dict, torch.optim.Optimizer]:
    """A state with every part `Trainer.state` saves: model, loss, Adam after a step, the LR
    schedule, the grad scaler, numpy/python/torch RNG states, history, config and meta."""
    cfg = resolve_config(toy_config(), "toy", seed=1)
    model = build_model(cfg["model"], 20, 12)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LrSchedule(cfg["train"], 4))
    model(torch.randn(2, 30, 20)).embedding.sum().backward()
    optimizer.step()
    scheduler.step()
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    state = {
        "epoch": 1,
        "model": model.state_dict(),
        "crit": {"classifier.weight": torch.randn(3, 32)},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "history": [{"epoch": 1, "train": {"loss": 1.5, "lang_acc": 0.5}}],
        "config": cfg,
        "meta": {"languages": ["l0", "l1", "l2"], "num_phones": 12, "feat_dim": 20},
    }
    return state, optimizer


def test_training_checkpoints_load_weights_only_and_resume(tmp_path, monkeypatch):
    """Everything a resumed run needs survives the weights-only load (numpy's RNG state is
    the one allow-listed non-tensor type) and restores the same RNG streams."""
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    state, optimizer = _training_state()
    checkpoint.save(tmp_path / "epoch_1.pt", state)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    loaded = checkpoint.load(tmp_path / "epoch_1.pt")
    assert calls and all(k["weights_only"] is True for k in calls)
    assert loaded["config"] == state["config"] and loaded["history"] == state["history"]
    optimizer.load_state_dict(loaded["optimizer"])
    assert loaded["scheduler"] == state["scheduler"] and loaded["scaler"] == state["scaler"]
    set_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])


@pytest.mark.parametrize(
    "content, why",
    [
        (lambda good: good[: len(good) // 2], "unreadable or truncated"),
        (lambda good: b"", "unreadable or truncated"),
        (lambda good: b"not a checkpoint" * 8, "corrupt file"),
        (lambda good: b"\x80\x04junk", "unreadable or truncated"),
    ],
    ids=["truncated", "empty", "garbage", "bad pickle"],
)
def test_a_damaged_checkpoint_names_the_file_and_the_fix(tmp_path, content, why):
    good = tmp_path / "good.pt"
    checkpoint.save(good, {"model": {"w": torch.zeros(100)}})
    bad = tmp_path / "checkpoints" / "epoch_2.pt"
    bad.parent.mkdir()
    bad.write_bytes(content(good.read_bytes()))
    with pytest.raises(ApmError, match=why) as e:
        checkpoint.load(bad)
    assert str(e.value).startswith(f"{bad}: ") and "rerun stage 4" in str(e.value)
    with pytest.raises(ApmError, match="is a directory"):
        checkpoint.load(bad.parent)


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": {}, "x": _RunsCode(str(marker))}, tmp_path / "final.pt")
    with pytest.raises(ApmError, match="holds io.open, not only tensors.*could run code") as e:
        checkpoint.load(tmp_path / "final.pt")
    assert not marker.exists() and str(e.value).startswith(f"{tmp_path / 'final.pt'}: ")


def test_a_corrupt_package_model_names_it_and_how_to_rebuild(tmp_path):
    from apm.infer.package import FILES, FORMAT, load_package

    model = tmp_path / "exp" / "apm_am" / "model"
    model.mkdir(parents=True)
    for name in FILES:
        (model / name).write_text("")
    (model / "package.json").write_text(json.dumps({"format": FORMAT}))
    (model / "model.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ApmError) as e:
        load_package(model)
    message = str(e.value)
    assert message.startswith(f"{model / 'model.pt'}: ") and "package_model" in message
    assert str(model.parent) in message
