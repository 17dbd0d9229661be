"""Per-segment phonetic confidence c_i for APM-Softmax (PAPER.md, "APM-Softmax")."""

from __future__ import annotations

import torch
from torch import Tensor

from apm.utils.errors import ApmError

SOURCES = ("max_posterior", "frame_accuracy")
NORM_FLOOR = 1e-6  # smallest batch mean confidence divided by when normalising


@torch.no_grad()
def phone_confidence(
    phone_logits: Tensor,
    mask: Tensor | None,
    source: str = "max_posterior",
    labels: Tensor | None = None,
    normalize: bool = False,
) -> Tensor:
    """c_i [B] (float32, detached) from frame phone logits [B, T, P] over valid frames.

    source:
      max_posterior  (default, the reading in PAPER.md) c_i = mean over the segment's valid
                     frames of max_k p_t(k), p_t = softmax of the phone logits;
      frame_accuracy c_i = fraction of the valid frames with a virtual label (!= -1) whose
                     argmax phone equals that label; needs `labels` [B, T].
    A segment without any usable frame gets c_i = 0 (no margin).
    normalize: divide c_i by the batch mean so the batch's mean margin equals m; margins stay
    >= 0 but a c_i can exceed 1. Under DDP the mean is over each device's batch.
    """
    if phone_logits.dim() != 3:
        raise ApmError(f"phone logits have shape {tuple(phone_logits.shape)}; expected [B, T, P]")
    valid = torch.ones(phone_logits.shape[:2], dtype=torch.bool, device=phone_logits.device)
    if mask is not None:
        valid = valid & mask
    logits = phone_logits.detach().float()
    if source == "max_posterior":
        frame_score = torch.softmax(logits, dim=-1).amax(dim=-1)
    elif source == "frame_accuracy":
        if labels is None:
            raise ApmError("confidence 'frame_accuracy' needs the virtual phone labels")
        valid = valid & (labels >= 0)
        frame_score = (logits.argmax(dim=-1) == labels).float()
    else:
        raise ApmError(f"confidence source {source!r} is not one of {', '.join(SOURCES)}")
    w = valid.float()
    conf = (frame_score * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
    return normalize_confidence(conf) if normalize else conf


def normalize_confidence(conf: Tensor) -> Tensor:
    """c_i / mean(c) over the batch (floored), so the batch's mean margin m * c_i equals m."""
    return conf / conf.mean().clamp(min=NORM_FLOOR)
