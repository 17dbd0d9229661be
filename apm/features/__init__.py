"""Fbank + Kaldi energy VAD (stage 2), readers of its output and CMN for later stages."""

from apm.features.cmn import sliding_cmn
from apm.features.readers import load_feats, load_vad, read_cuts
from apm.features.vad import VadConfig, compute_vad

__all__ = ["VadConfig", "compute_vad", "load_feats", "load_vad", "read_cuts", "sliding_cmn"]
