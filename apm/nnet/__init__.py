"""Multi-task x-vector: frame trunk (TDNN, E-TDNN, ECAPA-TDNN, ResNet34; `apm.nnet.trunks`),
masked statistics pooling, segment layers (the x-vector) and a frame-level phone branch. See
`apm.nnet.xvector`."""

from apm.nnet.layers import FrameLayer, MaskedBatchNorm1d, stats_pooling
from apm.nnet.xvector import MODEL_DEFAULTS, ModelOutput, XVector, build_model

__all__ = [
    "MODEL_DEFAULTS",
    "FrameLayer",
    "MaskedBatchNorm1d",
    "ModelOutput",
    "XVector",
    "build_model",
    "stats_pooling",
]
