"""Multi-task loss L = L_lang + phone_weight * L_phone with the margin softmax on the
language branch (PAPER.md), built from the `loss` config section."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apm.losses.confidence import SOURCES, normalize_confidence, phone_confidence
from apm.losses.margin import FLAVOURS, MARGINS, MarginScheduler, MarginSoftmax, build_classifier
from apm.nnet.xvector import ModelOutput
from apm.utils.config import check_choice, check_number, merge_section
from apm.utils.errors import ApmError

LOSS_DEFAULTS: dict[str, Any] = {
    "kind": "apm",  # a name in apm.losses.margin.MARGINS: softmax | am | aam | apm
    "flavour": "am",  # form of the apm margin: am (s(cos - m_i)) | aam (s cos(theta + m_i))
    "margin": 0.2,  # base margin m (apm: m_i = m * c_i)
    "scale": 30.0,  # s
    "confidence": "max_posterior",  # c_i source: max_posterior | frame_accuracy
    "confidence_norm": False,  # divide c_i by its batch mean (mean margin = m)
    "margin_warmup_epochs": 0,  # linear margin ramp 0 -> m over this many epochs
    "phone_weight": 0.3,  # alpha of L_phone
}


@dataclass
class LossOutput:
    """What `MultiTaskLoss.forward` returns (all per batch).

    loss: the total L_lang + phone_weight * L_phone (L_lang alone without a phone loss).
    lang_loss, phone_loss: the two terms (phone_loss None without phone logits or labels).
    logits: [B, C] language logits with the margins applied, as used in the loss.
    confidence: [B] raw c_i before batch normalisation (None without phone logits, or for
        frame_accuracy without labels); detached.
    margins: [B] margin m_i actually applied to each segment (zeros for softmax).
    """

    loss: Tensor
    lang_loss: Tensor
    phone_loss: Tensor | None
    logits: Tensor
    confidence: Tensor | None
    margins: Tensor


class MultiTaskLoss(nn.Module):
    """Language margin softmax (`self.classifier`) + frame phone cross-entropy."""

    def __init__(
        self,
        classifier: MarginSoftmax,
        *,
        confidence: str = "max_posterior",
        confidence_norm: bool = False,
        margin_warmup_epochs: float = 0,
        phone_weight: float = 0.3,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.confidence_source = confidence
        self.confidence_norm = confidence_norm
        self.phone_weight = float(phone_weight)
        self.scheduler = MarginScheduler(classifier, classifier.margin, margin_warmup_epochs)

    def set_epoch(self, epoch: float) -> float:
        """Apply the margin warm-up for `epoch` (0-based, fractional); returns the base margin."""
        return self.scheduler.step(epoch)

    def scores(self, out: ModelOutput) -> Tensor:
        """Margin-free language scores [B, C] of a model output (for validation/extraction)."""
        return self.classifier.scores(out.classifier_input)

    def forward(
        self,
        out: ModelOutput,
        lang_labels: Tensor,
        phone_labels: Tensor | None,
        mask: Tensor | None,
    ) -> LossOutput:
        """Loss of a batch: lang_labels [B] (class ids in languages.txt order), phone_labels
        [B, T] (-1 = unlabelled; None: no phone loss), mask [B, T] (True = valid frame)."""
        confidence = self._confidence(out, phone_labels, mask)
        used = confidence
        if confidence is not None and self.confidence_norm:
            used = normalize_confidence(confidence)
        if self.classifier.needs_confidence and used is None:
            labels = self.confidence_source == "frame_accuracy"
            raise ApmError(
                f"loss kind {self.classifier.kind} needs the phone posteriors: set model.phone_branch true"
                + (" and give phone labels (confidence frame_accuracy)" if labels else "")
            )
        lang_loss, logits, margins = self.classifier.forward_with_margins(
            out.classifier_input, lang_labels, used
        )
        phone_loss = None
        loss = lang_loss
        if out.phone_logits is not None and phone_labels is not None:
            phone_loss = frame_cross_entropy(out.phone_logits, phone_labels, mask)
            loss = lang_loss + self.phone_weight * phone_loss
        return LossOutput(loss, lang_loss, phone_loss, logits, confidence, margins)

    def _confidence(
        self, out: ModelOutput, phone_labels: Tensor | None, mask: Tensor | None
    ) -> Tensor | None:
        """Raw c_i, computed whenever possible so every system can log it."""
        if out.phone_logits is None:
            return None
        if self.confidence_source == "frame_accuracy" and phone_labels is None:
            return None
        return phone_confidence(out.phone_logits, mask, self.confidence_source, labels=phone_labels)


def frame_cross_entropy(phone_logits: Tensor, labels: Tensor, mask: Tensor | None) -> Tensor:
    """Mean cross-entropy over frames with mask True and label != -1 (0 if there are none).

    phone_logits [B, T, P], labels [B, T] int. Computed in float32.
    """
    if labels.shape != phone_logits.shape[:2]:
        raise ApmError(
            f"phone labels have shape {tuple(labels.shape)} but the phone logits cover "
            f"{tuple(phone_logits.shape[:2])} frames; labels must be per input frame"
        )
    num_phones = phone_logits.shape[2]
    if labels.numel() and int(labels.max()) >= num_phones:
        raise ApmError(
            f"phone label {int(labels.max())} is outside the model's {num_phones} phones; "
            "the model was built with another phones.txt"
        )
    labels = labels.long()
    if mask is not None:
        labels = labels.masked_fill(~mask, -1)
    count = (labels >= 0).sum().clamp(min=1)
    with torch.autocast(device_type=phone_logits.device.type, enabled=False):
        total = F.cross_entropy(
            phone_logits.reshape(-1, num_phones).float(),
            labels.reshape(-1),
            ignore_index=-1,
            reduction="sum",
        )
    return total / count


def build_loss(cfg: Mapping[str, Any] | None, embed_dim: int, num_langs: int) -> MultiTaskLoss:
    """Build the multi-task loss from the `loss` config section; unknown keys are an ApmError.

    Keys (default): kind (apm; a registered margin, `apm.losses.margin.MARGINS`), flavour (am; or aam, the form of the
    apm margin), margin (0.2), scale (30.0), confidence (max_posterior; or frame_accuracy),
    confidence_norm (false), margin_warmup_epochs (0), phone_weight (0.3).
    """
    c = merge_section(cfg, LOSS_DEFAULTS, "loss")
    check_choice(c["kind"], tuple(MARGINS), "kind", "loss")
    check_choice(c["flavour"], FLAVOURS, "flavour", "loss")
    check_choice(c["confidence"], SOURCES, "confidence", "loss")
    check_choice(c["confidence_norm"], (True, False), "confidence_norm", "loss")
    margin = check_number(c["margin"], "margin", "loss")
    scale = check_number(c["scale"], "scale", "loss", strict=True)
    warmup = check_number(c["margin_warmup_epochs"], "margin_warmup_epochs", "loss")
    phone_weight = check_number(c["phone_weight"], "phone_weight", "loss")
    if num_langs < 2:
        raise ApmError(f"language recognition needs at least 2 training languages, got {num_langs}")
    classifier = build_classifier(c["kind"], embed_dim, num_langs, margin, scale, c["flavour"])
    return MultiTaskLoss(
        classifier,
        confidence=c["confidence"],
        confidence_norm=c["confidence_norm"],
        margin_warmup_epochs=warmup,
        phone_weight=phone_weight,
    )
