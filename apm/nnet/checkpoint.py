"""Epoch checkpoints (`checkpoints/epoch_<N>.pt`, written atomically) and `final.pt`, the
average of the last N of them.

`final.pt` holds what extraction needs and nothing else: the model and loss weights, the
resolved config and `meta` (languages in class order, number of phones, feature dimension).
Averaged weights do not match any checkpoint's BatchNorm statistics, so the trainer
re-estimates those before writing it (`Trainer.recalibrate_batchnorm`).

Every checkpoint (and a model package's `model.pt`) is read with `torch.load(weights_only=True)`:
tensors, plain Python values and the numpy arrays of the saved RNG state (`SAFE_GLOBALS`),
nothing that can run code, so a copied-in `exp/` is safe to load.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

import numpy as np
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


# What a checkpoint holds besides tensors and plain values: numpy's RNG state (a uint32 array
# in `rng.numpy`, np.random.get_state()). These rebuild arrays of plain numbers only.
_NP_CORE = np._core if hasattr(np, "_core") else np.core  # numpy 2 | numpy 1.26
SAFE_GLOBALS = [
    _NP_CORE.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]
RERUN_TRAINING = (
    "delete it and rerun stage 4 (./run.sh --stage 4 --stop-stage 4 --systems <system> "
    "--force true): training resumes after the last readable epoch checkpoint"
)


def load(path: str | os.PathLike, rebuild: str = RERUN_TRAINING) -> dict:
    """The dict saved in `path`, read with `weights_only=True` (see the module docstring).

    A missing, truncated or corrupt file, or one holding other objects than a checkpoint
    does, is an ApmError naming `path` and saying how to write it again (`rebuild`).
    """
    path = Path(path)
    if path.is_dir():
        raise ApmError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise ApmError(f"{path}: checkpoint not found; train the system first (stage 4)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if unsafe is None:  # not a torch file, or a damaged one
            raise ApmError(f"{path}: corrupt file ({_first_line(e)}); {rebuild}") from None
        raise ApmError(
            f"{path}: holds {unsafe.group(1)}, not only tensors and plain values, so it was "
            f"not loaded (loading it could run code); this project does not write such files: "
            f"{rebuild}"
        ) from None
    except Exception as e:  # any other failure to parse: truncated zip, legacy pickle junk
        raise ApmError(f"{path}: unreadable or truncated ({_first_line(e)}); {rebuild}") from None
    if not isinstance(state, dict):
        raise ApmError(f"{path}: holds a {type(state).__name__}, not a checkpoint; {rebuild}")
    return state


def _first_line(error: BaseException) -> str:
    """The first sentence of an error's message (torch's run on for lines), or its type."""
    text = str(error).strip()
    if not text or isinstance(error, KeyError):
        return type(error).__name__ if not text else f"{type(error).__name__} {text}"
    return text.splitlines()[0].split(". ")[0]


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
