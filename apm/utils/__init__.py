"""Plumbing shared by every stage: user-facing errors, logging, atomic files, frame maths."""

from apm.utils.errors import ApmError
from apm.utils.frames import FRAME_SHIFT, fit_frame_count, num_frames
from apm.utils.io import atomic_dir, atomic_path, atomic_write, read_kv, write_kv

__all__ = [
    "ApmError",
    "FRAME_SHIFT",
    "atomic_dir",
    "atomic_path",
    "atomic_write",
    "fit_frame_count",
    "num_frames",
    "read_kv",
    "write_kv",
]
