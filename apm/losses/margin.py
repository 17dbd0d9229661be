"""The margin-softmax family (softmax, AM, AAM, APM) with one implementation of the cosine
logits, a registry of the margin kinds by name, and the margin warm-up schedule.

For class weights w_c and an embedding x, cos(theta_c) = <x/|x|, w_c/|w_c|>. With the
target class y of segment i and its margin m_i the target logit is
    am:   s * (cos(theta_y) - m_i)                                   (CosFace / AM-Softmax)
    aam:  s * cos(theta_y + m_i)      where theta_y + m_i <= pi,    (ArcFace / AAM-Softmax)
          s * (cos(theta_y) - (1 - cos(m_i)))   where theta_y + m_i > pi
and every other logit is s * cos(theta_c). The aam fallback is WeSpeaker's ArcMarginProduct
(easy_margin=False): beyond theta_y = pi - m_i, cos(theta + m) would rise again and reward
moving away from the class; the AM-style penalty 1 - cos(m_i) is continuous with
cos(theta_y + m_i) at the switch point and keeps the target logit decreasing in theta_y.
    m_i = margin                  for am and aam,
    m_i = margin * c_i            for apm (PAPER.md), in the `flavour` am or aam form,
    softmax: a plain linear layer (with bias) and cross-entropy; no margin.
The cosines, logits and loss are computed in float32 with autocast off, so bf16/fp16 training
cannot overflow s * cos or hit acos(+-1).

A new margin is one subclass of `MarginSoftmax` (its `_target_logit`, and `margins` when the
margin varies per segment) and one line in `MARGINS` (as WeSpeaker's projections); the
`loss.kind` config key names it, and its errors list the registered names.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apm.utils.errors import ApmError

COS_EPS = 1e-6  # cos is clamped to [-1 + eps, 1 - eps] before acos (finite gradient)
NORM_EPS = 1e-8  # floor of |x| and |w| in the normalisation


def am_target(cos_y: Tensor, m: Tensor) -> Tensor:
    """Additive margin on the cosine: cos(theta_y) - m."""
    return cos_y - m


def aam_target(cos_y: Tensor, m: Tensor) -> Tensor:
    """Additive angular margin cos(theta_y + m), with the continuous fallback past pi."""
    theta = torch.acos(cos_y.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS))
    return torch.where(theta + m <= math.pi, torch.cos(theta + m), cos_y - (1 - torch.cos(m)))


# How a (per-segment) margin enters the target cosine; apm's `flavour` picks one.
FORMS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"am": am_target, "aam": aam_target}
FLAVOURS = tuple(FORMS)
# The base margins each form accepts, (low, high, high included): AM shifts a cosine in [-1, 1],
# so m > 1 makes the target logit lower than any non-target one can be; AAM adds an angle, and
# at m >= pi/2 a target at theta = 0 already scores no better than an orthogonal class.
MARGIN_RANGES: dict[str, tuple[float, float, bool]] = {
    "am": (0.0, 1.0, True),
    "aam": (0.0, math.pi / 2, False),
}


class MarginSoftmax(nn.Module):
    """Language classifier + loss: `loss, logits = module(embeddings, labels, confidence)`.

    The base class is a cosine classifier whose target logit gets a constant margin in the
    form `_target_logit` gives; subclasses are the registered kinds (`MARGINS`). margin: the
    base m (the schedule may change `self.margin` during training); scale: s; flavour: the
    form a per-segment margin is applied in (am | aam; used by apm only).
    """

    kind = ""  # the registry name, set by each subclass
    has_margin = True  # false: the margin stays 0 whatever the config and the schedule say
    needs_confidence = False  # true: forward needs the per-segment confidence c_i

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        margin: float = 0.2,
        scale: float = 30.0,
        flavour: str = "am",
    ) -> None:
        super().__init__()
        if flavour not in FLAVOURS:
            raise ApmError(f"apm flavour {flavour!r} is not one of {', '.join(FLAVOURS)}")
        if margin < 0 or scale <= 0:
            raise ApmError(
                f"margin must be >= 0 and scale > 0 (got margin {margin}, scale {scale})"
            )
        form = flavour if self.needs_confidence else self.kind
        if self.has_margin and form in MARGIN_RANGES:
            low, high, closed = MARGIN_RANGES[form]
            if not (low <= margin <= high if closed else low <= margin < high):
                bound = f"{low:g} <= m {'<=' if closed else '<'} {high:.4g}"
                shown = f"{self.kind} ({flavour} form)" if self.needs_confidence else self.kind
                raise ApmError(
                    f"loss.margin {margin:g} is out of range for {shown}: it needs {bound} "
                    "(typical values 0.1-0.5; the paper uses 0.2-0.3)"
                )
        self.scale, self.flavour = float(scale), flavour
        self.margin = float(margin) if self.has_margin else 0.0
        self.num_classes = num_classes
        self._init_weights(embed_dim, num_classes)

    def _init_weights(self, embed_dim: int, num_classes: int) -> None:
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embeddings: Tensor) -> Tensor:
        """cos(theta) [B, C] in float32."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = F.normalize(embeddings.float(), dim=1, eps=NORM_EPS)
            w = F.normalize(self.weight.float(), dim=1, eps=NORM_EPS)
            return x @ w.t()

    def scores(self, embeddings: Tensor) -> Tensor:
        """Margin-free outputs [B, C] for scoring: s * cos (float32)."""
        return self.scale * self.cosine(embeddings)

    def margins(self, batch: int, confidence: Tensor | None, device: torch.device) -> Tensor:
        """Per-segment margins m_i [B] (float32) for the current base margin."""
        return torch.full((batch,), self.margin, device=device)

    def logits(self, embeddings: Tensor, labels: Tensor, margins: Tensor) -> Tensor:
        """Logits [B, C] (float32) with the target class's logit carrying its margin."""
        cos = self.cosine(embeddings)
        target = cos.gather(1, labels.unsqueeze(1)).squeeze(1)
        new_target = self._target_logit(target, margins)
        return cos.scatter(1, labels.unsqueeze(1), new_target.unsqueeze(1)) * self.scale

    def _target_logit(self, cos_y: Tensor, m: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines no target logit")

    def forward(
        self, embeddings: Tensor, labels: Tensor, confidence: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(mean cross-entropy, logits [B, C] with the margins applied, float32)."""
        loss, logits, _ = self.forward_with_margins(embeddings, labels, confidence)
        return loss, logits

    def forward_with_margins(
        self, embeddings: Tensor, labels: Tensor, confidence: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Like forward, plus the per-segment margins [B] actually used."""
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ApmError(
                f"language labels must be in 0..{self.num_classes - 1}; got "
                f"{int(labels.min())}..{int(labels.max())}"
            )
        margins = self.margins(embeddings.shape[0], confidence, embeddings.device)
        logits = self.logits(embeddings, labels, margins)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            loss = F.cross_entropy(logits, labels)
        return loss, logits, margins

    def extra_repr(self) -> str:
        return f"kind={self.kind}, margin={self.margin}, scale={self.scale}"


class Softmax(MarginSoftmax):
    """A plain linear layer (with bias) and cross-entropy; no margin."""

    kind, has_margin = "softmax", False

    def _init_weights(self, embed_dim: int, num_classes: int) -> None:
        self.linear = nn.Linear(embed_dim, num_classes)

    def scores(self, embeddings: Tensor) -> Tensor:
        """The linear logits [B, C] (float32)."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self.linear(embeddings.float())

    def margins(self, batch: int, confidence: Tensor | None, device: torch.device) -> Tensor:
        return torch.zeros(batch, device=device)

    def logits(self, embeddings: Tensor, labels: Tensor, margins: Tensor) -> Tensor:
        return self.scores(embeddings)


class AdditiveMargin(MarginSoftmax):
    """AM-Softmax (CosFace): s * (cos(theta_y) - m)."""

    kind = "am"

    def _target_logit(self, cos_y: Tensor, m: Tensor) -> Tensor:
        return am_target(cos_y, m)


class AdditiveAngularMargin(MarginSoftmax):
    """AAM-Softmax (ArcFace): s * cos(theta_y + m)."""

    kind = "aam"

    def _target_logit(self, cos_y: Tensor, m: Tensor) -> Tensor:
        return aam_target(cos_y, m)


class PhonemeAwareMargin(MarginSoftmax):
    """APM-Softmax: the margin of segment i is m * c_i, c_i its phonetic confidence (not
    back-propagated), applied in the `flavour` form."""

    kind, needs_confidence = "apm", True

    def margins(self, batch: int, confidence: Tensor | None, device: torch.device) -> Tensor:
        if confidence is None:
            raise ApmError("the apm loss needs a per-segment confidence (phone branch output)")
        if confidence.shape != (batch,):
            raise ApmError(
                f"confidence has shape {tuple(confidence.shape)}; expected ({batch},), one per segment"
            )
        return self.margin * confidence.detach().float().clamp(min=0.0)

    def _target_logit(self, cos_y: Tensor, m: Tensor) -> Tensor:
        return FORMS[self.flavour](cos_y, m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, flavour={self.flavour}"


# The registry: `loss.kind` -> class. A new margin kind is one class above and one line here.
MARGINS: dict[str, type[MarginSoftmax]] = {
    cls.kind: cls for cls in (Softmax, AdditiveMargin, AdditiveAngularMargin, PhonemeAwareMargin)
}
KINDS = tuple(MARGINS)


def build_classifier(
    kind: str,
    embed_dim: int,
    num_classes: int,
    margin: float = 0.2,
    scale: float = 30.0,
    flavour: str = "am",
) -> MarginSoftmax:
    """The registered margin classifier `kind`; an unknown kind is an ApmError listing them."""
    if kind not in MARGINS:
        raise ApmError(f"loss kind {kind!r} is not one of {', '.join(MARGINS)}")
    return MARGINS[kind](embed_dim, num_classes, margin, scale, flavour)


class MarginScheduler:
    """Margin warm-up: the classifier's base margin goes linearly from 0 to `final_margin`
    over `warmup_epochs` epochs (fractional epochs allowed, so it can step per batch), then
    stays. Like WeSpeaker's MarginScheduler with increase_start_epoch 0 and a linear ramp;
    it keeps large margins from stalling the first epochs. `warmup_epochs` 0: no warm-up.
    """

    def __init__(self, classifier: MarginSoftmax, final_margin: float, warmup_epochs: float):
        if warmup_epochs < 0:
            raise ApmError(f"margin warm-up epochs must be >= 0, got {warmup_epochs}")
        self.classifier = classifier
        self.final_margin = float(final_margin) if classifier.has_margin else 0.0
        self.warmup_epochs = float(warmup_epochs)
        self.step(0.0)

    def margin_at(self, epoch: float) -> float:
        if self.warmup_epochs == 0:
            return self.final_margin
        return self.final_margin * min(1.0, max(0.0, epoch) / self.warmup_epochs)

    def step(self, epoch: float) -> float:
        """Set the classifier's margin for `epoch` (0-based, fractional) and return it."""
        self.classifier.margin = self.margin_at(epoch)
        return self.classifier.margin
