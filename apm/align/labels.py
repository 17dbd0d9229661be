"""Per-frame label sequences: from decoder segments, and time-warped for speed-perturbed copies."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from apm.align.phones import SILENCE_ID
from apm.utils.frames import fit_frame_count


def segments_to_frames(segments: Iterable[tuple[int, int, int]], shift: int = 0) -> np.ndarray:
    """Per-frame ids from `(phone_id, first_frame, last_frame)` segments (inclusive ends).

    Frames no segment covers are silence. `shift` delays every segment by that many frames
    (the first label is repeated in front), which moves a decoder's frame grid onto ours.
    """
    segments = list(segments)
    length = max((last + 1 for _, _, last in segments), default=0)
    labels = np.full(length, SILENCE_ID, dtype=np.int32)
    for phone, first, last in segments:
        labels[first : last + 1] = phone
    if shift > 0 and length:
        labels = np.concatenate([np.repeat(labels[:1], shift), labels])
    return labels


def warp_labels(labels: np.ndarray, factor: float, target: int, utt: str) -> np.ndarray:
    """Labels of a copy played `factor` times faster (lhotse `perturb_speed(factor)`).

    Frame t of the copy shows the original at time t * factor; the copy has about
    len(labels) / factor frames, and `target` (its feature frame count) must agree within the
    usual tolerance.
    """
    length = round(len(labels) / factor)
    idx = np.minimum(np.floor(np.arange(length) * factor + 0.5).astype(np.int64), len(labels) - 1)
    return fit_frame_count(labels[idx], target, utt)
