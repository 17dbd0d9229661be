"""Frame convention shared by features, alignments and training.

Frames are 10 ms apart and not snipped at the edges (Kaldi `--snip-edges=false`, lhotse's
default): a recording of N samples at rate R has round(N / hop) frames with hop = R / 100,
computed as (N + hop // 2) // hop exactly as `lhotse.utils.compute_num_frames` does. Frame t
covers the 25 ms window centred at (t + 0.5) * 10 ms. Every per-frame label (alignments, VAD)
has this count.
"""

from __future__ import annotations

import numpy as np

from apm.utils.errors import ApmError

FRAME_SHIFT = 0.01  # seconds
FRAME_TOLERANCE = 2  # frames a label sequence may differ by before it is an error


def num_frames(num_samples: int, sampling_rate: int) -> int:
    """Number of 10 ms feature frames of a recording of `num_samples` samples."""
    hop = round(FRAME_SHIFT * sampling_rate)
    return int((num_samples + hop // 2) // hop)


def fit_frame_count(
    labels: np.ndarray, target: int, utt: str, tolerance: int = FRAME_TOLERANCE
) -> np.ndarray:
    """Pad (repeating the edge) or truncate per-frame `labels` to `target` frames.

    A difference of at most `tolerance` frames comes from rounding conventions and is fixed;
    a larger one means the labels belong to other audio and raises an ApmError naming `utt`.
    """
    diff = target - len(labels)
    if abs(diff) > tolerance:
        raise ApmError(
            f"utterance {utt}: {len(labels)} label frames but {target} feature frames "
            f"(more than {tolerance} apart); the labels were made from different audio or "
            "another frame shift; regenerate them from the same recordings"
        )
    if diff > 0:
        if len(labels) == 0:
            raise ApmError(f"utterance {utt}: empty label sequence for {target} frames")
        return np.concatenate([labels, np.repeat(labels[-1:], diff)])
    return labels[:target]
