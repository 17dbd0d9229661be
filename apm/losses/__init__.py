"""Margin losses for language recognition (softmax, AM, AAM, APM), the phonetic confidence
c_i, the margin warm-up, and the multi-task loss L_lang + alpha L_phone."""

from apm.losses.confidence import phone_confidence
from apm.losses.margin import MARGINS, MarginScheduler, MarginSoftmax, build_classifier
from apm.losses.multitask import (
    LOSS_DEFAULTS,
    LossOutput,
    MultiTaskLoss,
    build_loss,
    frame_cross_entropy,
)

__all__ = [
    "LOSS_DEFAULTS",
    "MARGINS",
    "LossOutput",
    "MarginScheduler",
    "MarginSoftmax",
    "MultiTaskLoss",
    "build_classifier",
    "build_loss",
    "frame_cross_entropy",
    "phone_confidence",
]
