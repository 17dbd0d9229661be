"""Language-phoneme multi-task x-vector (../shared/PAPER.md, "The network").

feats [B, T, F] --trunk (`model.trunk`: tdnn, etdnn, ecapa_tdnn, resnet34; apm.nnet.trunks)
    |   --> frame features [B, T', C] (T' = T but for resnet34, T/8)
    |-- phone branch: `phone_hidden_layers` 1x1 frame layers on trunk layer `phone_layer`
    |   (at the input frame rate), then a frame classifier --> phone_logits [B, T, P]
    `-- stats layer (1x1, `stats_channels`) -> pooling over valid frames (mean+std; attentive
        for ecapa_tdnn) -> segment affine 1 (= the x-vector, `embedding`) -> ReLU -> BN
        -> segment affine 2 -> ReLU -> BN (= `classifier_input`, what the margin softmax sees)
Every trunk has the same phone branch, segment layers and margin softmax (any `loss.kind`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from apm.nnet.layers import FrameLayer
from apm.nnet.trunks import ETDNN, TDNN, TRUNKS, build_pooling
from apm.utils.config import check_choice, check_int, merge_section
from apm.utils.errors import ApmError

logger = logging.getLogger(__name__)

__all__ = ["ETDNN", "MODEL_DEFAULTS", "TDNN", "TRUNKS", "ModelOutput", "XVector", "build_model"]

MODEL_DEFAULTS: dict[str, Any] = {
    "trunk": "etdnn",  # tdnn | etdnn | ecapa_tdnn | resnet34 (apm.nnet.trunks.TRUNKS)
    "channels": 512,  # width of every trunk layer (resnet34: of its first stage)
    "stats_channels": 1500,  # width of the 1x1 layer before statistics pooling
    "embed_dim": 512,  # width of both segment layers (the x-vector dimension)
    "phone_branch": True,  # add the frame-level phone classifier (multi-task)
    "phone_layer": None,  # trunk layer (tap) index feeding the phone branch; None = last
    "phone_channels": 512,  # width of the phone branch's hidden frame layers
    "phone_hidden_layers": 3,  # number of 1x1 frame layers in the phone branch
}
# A trunk's `defaults` add keys (ecapa_tdnn: res2net_scale, se_channels, attention_channels)
# or change the defaults above for that trunk only; tdnn and etdnn add none.


def model_defaults(trunk: str) -> dict[str, Any]:
    """The `model` keys and defaults of `trunk`."""
    return {**MODEL_DEFAULTS, **TRUNKS[trunk].defaults, "trunk": trunk}


def resolve_model_config(cfg: Mapping[str, Any] | None, where: str = "model") -> dict[str, Any]:
    """The `model` section with its trunk's defaults filled in; an unknown trunk or key is an
    ApmError listing the valid ones (the keys valid for that trunk)."""
    trunk = (cfg or {}).get("trunk", MODEL_DEFAULTS["trunk"])
    if trunk not in TRUNKS:
        raise ApmError(
            f"{where}: 'model.trunk' is {trunk!r}; the known trunks are {', '.join(TRUNKS)}"
        )
    return merge_section(cfg, model_defaults(trunk), where)


@dataclass
class ModelOutput:
    """What `XVector.forward` returns.

    embedding: [B, E] the x-vector (output of the first segment affine layer, before its
        ReLU, as in Kaldi); this is what extraction writes and the back-end scores.
    phone_logits: [B, T, P] frame-level phone logits aligned with the input frames, or None
        without a phone branch (or when forward was called with `phones=False`). Entries at
        masked frames are meaningless (the trunk is zero there); the losses ignore them.
    classifier_input: [B, E] the output of the last segment layer, the input of the language
        classifier (the margin softmax sits on top of both segment layers, PAPER.md). Use
        `MultiTaskLoss.scores(out)` rather than feeding `embedding` to the classifier.
    """

    embedding: Tensor
    phone_logits: Tensor | None
    classifier_input: Tensor


class XVector(nn.Module):
    """Multi-task x-vector; see the module docstring for the layout and `MODEL_DEFAULTS`."""

    def __init__(
        self,
        feat_dim: int,
        num_phones: int,
        *,
        trunk: str = "etdnn",
        channels: int = 512,
        stats_channels: int = 1500,
        embed_dim: int = 512,
        phone_branch: bool = True,
        phone_layer: int | None = None,
        phone_channels: int = 512,
        phone_hidden_layers: int = 3,
        **options: Any,
    ) -> None:
        """`options`: the keys a trunk adds (`apm.nnet.trunks`, its `defaults`)."""
        super().__init__()
        self.feat_dim, self.embed_dim = feat_dim, embed_dim
        self.num_phones = num_phones if phone_branch else 0
        trunk_cls = TRUNKS[trunk]
        # Construction order (hence the seeded initialisation) of tdnn/etdnn is as it was
        # before the registry: trunk layers, stats layer, segment layers, phone branch.
        self.trunk = trunk_cls(feat_dim, channels, **options)  # type: ignore[arg-type]
        self.stats_layer = FrameLayer(self.trunk.out_dim, stats_channels, (0,))
        self.pooling = build_pooling(trunk_cls.pooling, stats_channels, options)
        self.segment1 = nn.Linear(2 * stats_channels, embed_dim)
        self.segment1_bn = nn.BatchNorm1d(embed_dim)
        self.segment2 = nn.Linear(embed_dim, embed_dim)
        self.segment2_bn = nn.BatchNorm1d(embed_dim)
        layers = trunk_cls.taps()
        self.phone_layer = layers - 1 if phone_layer is None else phone_layer % layers
        self.phone_layers = nn.ModuleList()
        self.phone_out: nn.Linear | None = None
        if phone_branch:
            in_dim = self.trunk.tap_dim(self.phone_layer)
            for _ in range(phone_hidden_layers):
                self.phone_layers.append(FrameLayer(in_dim, phone_channels, (0,)))
                in_dim = phone_channels
            self.phone_out = nn.Linear(in_dim, num_phones)

    def forward(
        self, feats: Tensor, mask: Tensor | None = None, phones: bool = True
    ) -> ModelOutput:
        """feats [B, T, F] float, mask [B, T] bool (True = valid frame; None = all valid).

        `phones=False` skips the phone branch (extraction does not need it). Pass `mask=None`
        for a batch without padding: the unmasked path uses the fused BatchNorm kernels. The
        model does not test the mask itself (`mask.all()` would be a data-dependent branch,
        a graph break under `torch.compile`); the data pipeline knows on the host
        (`batch["padded"]`, apm.train.batches).
        """
        if feats.dim() != 3 or feats.shape[2] != self.feat_dim:
            raise ApmError(
                f"x-vector input has shape {tuple(feats.shape)}; expected [batch, frames, "
                f"{self.feat_dim}] (the model was built for {self.feat_dim}-dim features)"
            )
        x = feats
        if mask is not None:
            x = x * mask.unsqueeze(2).to(x.dtype)
        with_phones = phones and self.phone_out is not None
        tap = self.phone_layer if with_phones else -1  # -1: no tap (nothing to repeat)
        x, frame_mask, phone_in = self.trunk(x, mask, tap)
        stats = self.pooling(self.stats_layer(x, frame_mask), frame_mask)
        embedding = self.segment1(stats)
        hidden = self.segment1_bn(torch.relu(embedding))
        classifier_input = self.segment2_bn(torch.relu(self.segment2(hidden)))
        phone_logits = None
        if with_phones and self.phone_out is not None:
            for layer in self.phone_layers:
                phone_in = layer(phone_in, mask)
            phone_logits = self.phone_out(phone_in)
        return ModelOutput(embedding, phone_logits, classifier_input)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs_per_frame(self, phones: bool = True) -> int:
        """Multiply-accumulates per input frame of the frame-level layers (trunk, stats layer
        and, with `phones`, the phone branch); the segment layers run once per segment."""
        after = self.stats_layer.macs_per_frame() + self.pooling.macs_per_frame()
        macs = self.trunk.macs_per_frame() + after // self.trunk.time_stride
        if phones and self.phone_out is not None:
            macs += sum(layer.macs_per_frame() for layer in self.phone_layers)
            macs += self.phone_out.weight.numel()
        return macs

    def macs_per_segment(self) -> int:
        """Multiply-accumulates of the segment layers (once per segment)."""
        return self.segment1.weight.numel() + self.segment2.weight.numel()


def build_model(cfg: Mapping[str, Any] | None, feat_dim: int, num_phones: int) -> XVector:
    """Build the x-vector from the `model` config section; a key not listed is an ApmError.

    Keys (default): trunk (etdnn; or tdnn, ecapa_tdnn, resnet34), channels (512),
    stats_channels (1500), embed_dim (512), phone_branch (true), phone_layer (null = last
    trunk layer; negative indices count from the end), phone_channels (512),
    phone_hidden_layers (3), and the keys and defaults a trunk adds or changes
    (`apm.nnet.trunks`: ecapa_tdnn res2net_scale 8, se_channels 128, attention_channels 128,
    channels 512, stats_channels 1536, embed_dim 192; resnet34 channels 32, embed_dim 256).
    `num_phones` is the size of the phone inventory (phones.txt); ignored without a phone
    branch. Logs the parameter count and the MACs per frame.
    """
    c = resolve_model_config(cfg)
    ints = ["channels", "stats_channels", "embed_dim", "phone_channels"]
    ints += [k for k in TRUNKS[c["trunk"]].defaults if k not in MODEL_DEFAULTS]
    for key in ints:
        c[key] = check_int(c[key], key, "model", minimum=1)
    c["phone_hidden_layers"] = check_int(
        c["phone_hidden_layers"], "phone_hidden_layers", "model", minimum=0
    )
    check_choice(c["phone_branch"], (True, False), "phone_branch", "model")
    feat_dim = check_int(feat_dim, "feat_dim (feature dimension)", "model", minimum=1)
    n_trunk = TRUNKS[c["trunk"]].taps()
    if c["phone_layer"] is not None:
        c["phone_layer"] = check_int(c["phone_layer"], "phone_layer", "model", minimum=-n_trunk)
        if c["phone_layer"] >= n_trunk:
            raise ApmError(
                f"'model.phone_layer' is {c['phone_layer']} but the {c['trunk']} trunk has "
                f"{n_trunk} layers (valid: {-n_trunk}..{n_trunk - 1}, or null for the last)"
            )
    if c["phone_branch"]:
        num_phones = check_int(num_phones, "num_phones (phone inventory size)", "model", minimum=1)
    model = XVector(feat_dim, num_phones, **c)
    logger.info(
        "x-vector %s: %d trunk layers x %d, stats %d, embedding %d, phone branch %s; "
        "%d parameters, %.2f MMAC/frame",
        c["trunk"],
        n_trunk,
        c["channels"],
        c["stats_channels"],
        c["embed_dim"],
        f"on layer {model.phone_layer} ({num_phones} phones)" if c["phone_branch"] else "off",
        model.num_parameters(),
        model.macs_per_frame() / 1e6,
    )
    return model
