"""Energy VAD with the semantics of Kaldi's `compute-vad`.

A frame is speech when, among the frames within `frames_context` of it (clipped at the
edges), at least the fraction `proportion_threshold` have a log energy above
`energy_threshold + energy_mean_scale * mean(log_energy)`. The log energy is Kaldi's raw
frame energy of int16-scale samples (what `compute-mfcc-feats` puts in column 0), so the
thresholds of Kaldi recipes carry over unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VadConfig:
    # Defaults: Kaldi's x-vector recipes (egs/sre16/v2/conf/vad.conf).
    energy_threshold: float = 5.5
    energy_mean_scale: float = 0.5
    frames_context: int = 2
    proportion_threshold: float = 0.12


def compute_vad(log_energy: np.ndarray, config: VadConfig = VadConfig()) -> np.ndarray:
    """float32 0/1 per frame, as `compute-vad` writes it."""
    log_energy = np.asarray(log_energy, dtype=np.float64)
    if len(log_energy) == 0:
        return np.zeros(0, dtype=np.float32)
    threshold = config.energy_threshold
    if config.energy_mean_scale != 0.0:
        threshold += config.energy_mean_scale * log_energy.mean()
    above = (log_energy > threshold).astype(np.float64)
    c = config.frames_context
    window = np.ones(2 * c + 1)
    # "full" then slice: "same" would return the window's length for very short inputs.
    num = np.convolve(above, window)[c : c + len(above)]
    den = np.convolve(np.ones_like(above), window)[c : c + len(above)]
    return (num >= den * config.proportion_threshold).astype(np.float32)
