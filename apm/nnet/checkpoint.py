"""Epoch checkpoints (`checkpoints/epoch_<N>.pt`, written atomically) and `final.pt`, the
average of the last N of them.

`final.pt` holds what extraction needs and nothing else: the model and loss weights, the
resolved config and `meta` (languages in class order, number of phones, feature dimension).
Averaged weights do not match any checkpoint's BatchNorm statistics, so the trainer
re-estimates those before writing it (`Trainer.recalibrate_batchnorm`).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import torch

from apm.utils.errors import ApmError
from apm.utils.io import atomic_write

EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")


def checkpoint_dir(exp_dir: str | os.PathLike) -> Path:
    return Path(exp_dir) / "checkpoints"


def list_checkpoints(exp_dir: str | os.PathLike) -> dict[int, Path]:
    """{epoch: path} of the epoch checkpoints present."""
    folder = checkpoint_dir(exp_dir)
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = EPOCH_FILE.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def save(path: str | os.PathLike, state: dict) -> None:
    """Write `state` to `path` atomically. It is serialised in memory first and written with
    Python's own file write: a full disk is then an OSError (ENOSPC) naming `path`, which the
    CLIs report as `cannot write <path>: No space left on device` (torch's writer on a full
    disk says only `basic_ios::clear: iostream error`)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        with atomic_write(path, "wb") as f:
            f.write(buffer.getbuffer())
    except OSError as e:
        raise OSError(e.errno, e.strerror, os.fspath(path)) from e


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ApmError(f"{path}: checkpoint not found; train the system first (stage 4)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as e:
        raise ApmError(f"{path}: unreadable checkpoint ({e}); delete it and rerun") from e


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating tensors; integer buffers (BatchNorm's
    num_batches_tracked) are taken from the last state."""
    out = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            out[key] = torch.stack([s[key].double() for s in states]).mean(0).to(last.dtype)
        else:
            out[key] = last.clone()
    return out


def average_last(exp_dir: str | os.PathLike, last_n: int) -> dict:
    """The `final.pt` state: model and loss weights averaged over the last `last_n` epoch
    checkpoints, with the config and meta of the last one."""
    found = list_checkpoints(exp_dir)
    if not found:
        raise ApmError(f"{checkpoint_dir(exp_dir)}: no epoch checkpoint to average")
    epochs = list(found)[-last_n:]
    states = [load(found[e]) for e in epochs]
    return {
        "model": average_state_dicts([s["model"] for s in states]),
        "crit": average_state_dicts([s["crit"] for s in states]),
        "config": states[-1]["config"],
        "meta": states[-1]["meta"],
        "averaged_epochs": epochs,
    }
