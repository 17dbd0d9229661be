"""Kaldi per-frame labels made with `--snip-edges=true`, moved onto our frame grid.

Kaldi's ASR features usually snip the edges (its default): N samples at 16 kHz give
M = 1 + (N - 400) // 160 frames, frame s covering samples [160 s, 160 s + 400), centre
160 s + 200. Ours (`apm.utils.frames`, `--snip-edges=false`) give T = (N + 80) // 160 frames,
frame t centred at 160 t + 80. For every N >= 400, M = T - 2.

Nearest centre: our frame t is closest to Kaldi frame s = t - 1 (40 samples apart; frame t is
120 apart). So our labels are Kaldi's shifted one frame later, our first frame repeats Kaldi's
first label (no Kaldi window is nearer) and our last frame repeats Kaldi's last:
    ours[t] = kaldi[clip(t - 1, 0, M - 1)],  t = 0 .. M + 1 = T - 1.
With the 25 ms window and 10 ms shift of both sides the offset does not depend on the rate.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

# Kaldi frame nearest to our frame t is t - SNIP_OFFSET (25 ms windows, 10 ms shift).
SNIP_OFFSET = 1


def snipped_num_frames(num_samples: int, window: int = 400, hop: int = 160) -> int:
    """Kaldi's frame count with --snip-edges=true (0 when shorter than one window)."""
    return 0 if num_samples < window else 1 + (num_samples - window) // hop


def unsnip_labels(labels: np.ndarray) -> np.ndarray:
    """Labels of M snip-edges frames as the M + 2 frames of our grid (see the module doc)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return labels
    return np.concatenate([labels[:SNIP_OFFSET], labels, labels[-1:]])


class UnsnippedLabels(Mapping):
    """A read-only view of a label table (e.g. a lazy kaldiio scp) that re-grids on access."""

    def __init__(self, labels: Mapping[str, np.ndarray]) -> None:
        self._labels = labels

    def __getitem__(self, utt: str) -> np.ndarray:
        return unsnip_labels(self._labels[utt])

    def __contains__(self, utt: object) -> bool:
        return utt in self._labels

    def __iter__(self) -> Iterator[str]:
        return iter(self._labels)

    def __len__(self) -> int:
        return len(self._labels)
