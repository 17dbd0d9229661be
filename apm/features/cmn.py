"""Sliding-window cepstral mean normalisation, as Kaldi's
`apply-cmvn-sliding --norm-vars=false --center=true --cmn-window=300`, for the stages that
read the raw features of stage 2 (training and extraction)."""

from __future__ import annotations

import numpy as np


def sliding_cmn(feats: np.ndarray, window: int = 300) -> np.ndarray:
    """Subtract from each frame the mean of a `window`-frame window centred on it; near the
    edges the window is shifted to stay inside the utterance (shorter utterances use all
    frames). Returns float32 [frames, bins]."""
    feats = np.asarray(feats, dtype=np.float64)
    T = len(feats)
    if T == 0:
        return feats.astype(np.float32)
    t = np.arange(T)
    start = t - window // 2
    end = start + window
    # Kaldi: shift a window hanging off the start to the right, one off the end to the left.
    end = np.where(start < 0, end - start, end)
    start = np.maximum(start, 0)
    start = np.where(end > T, np.maximum(start - (end - T), 0), start)
    end = np.minimum(end, T)
    csum = np.concatenate([np.zeros((1, feats.shape[1])), np.cumsum(feats, axis=0)])
    means = (csum[end] - csum[start]) / (end - start)[:, None]
    return (feats - means).astype(np.float32)
