"""The frame-level trunks of the x-vector, a registry of them by name (`model.trunk`).

Every trunk maps feats [B, T, F] (and the frame mask [B, T], True = valid) to frame
features [B, T', C] for the stats layer, the mask at that frame rate, and the input of the
phone branch at the input's frame rate [B, T, C_tap]. A padded frame is exactly zero after
every layer and batch statistics in training use valid frames only (`apm.nnet.layers`), so a
padded batch computes what its segments compute one by one, for every trunk.

  tdnn        the classic x-vector frame1-4 (Snyder et al. 2018); frame5 is the stats layer.
  etdnn       E-TDNN (Snyder et al. 2019, PAPER.md): dilated contexts interleaved with 1x1.
  ecapa_tdnn  ECAPA-TDNN (Desplanques et al. 2020): a k=5 TDNN layer, three SE-Res2Net
              blocks (dilations 2, 3, 4), multi-layer feature aggregation (the blocks'
              outputs concatenated; the stats layer is the 1x1 aggregation layer) and
              attentive statistics pooling with global context (`AttentiveStatsPooling`).
  resnet34    the thin ResNet34 of speaker/language recognition (as WeSpeaker's): 2D
              convolutions over (frequency, time) of the fbank, basic blocks [3, 4, 6, 3] of
              width channels x (1, 2, 4, 8) (channels = 32: "ResNet34 with 32 base channels"),
              stride 2 on both axes in stages 2-4; the last stage, flattened over frequency,
              is the frame feature (at 1/8 of the input frame rate).

A trunk has `taps()` layers for the phone branch (`model.phone_layer`): the layers of the
TDNNs; layer1 and the three blocks of ECAPA-TDNN; the stem and the four stages of the
ResNet. A tap below the input frame rate (ResNet stages 2-4) is repeated back to it.
A new trunk is one class here with its `name`, `defaults` (config keys it adds or whose
default it changes) and `pooling`, and one entry in `TRUNKS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from apm.nnet.layers import FrameLayer, MaskedBatchNorm2d, masked_mean, stats_pooling
from apm.utils.errors import ApmError

# Trunk topologies of the TDNNs: the context of each layer; every layer is `channels` wide.
ETDNN = (
    (-2, -1, 0, 1, 2),
    (0,),
    (-2, 0, 2),
    (0,),
    (-3, 0, 3),
    (0,),
    (-4, 0, 4),
    (0,),
)
TDNN = ((-2, -1, 0, 1, 2), (-2, 0, 2), (-3, 0, 3), (0,))

Taps = tuple[Tensor, Tensor | None, Tensor]


class TdnnTrunk(nn.ModuleList):
    """TDNN / E-TDNN: FrameLayers of the given contexts (state_dict keys `trunk.<i>.*`)."""

    name = "tdnn"
    contexts: tuple[tuple[int, ...], ...] = TDNN
    defaults: dict[str, Any] = {}
    pooling = "stats"
    time_stride = 1  # input frames per output frame

    def __init__(self, feat_dim: int, channels: int) -> None:
        layers, in_dim = [], feat_dim
        for context in self.contexts:
            layers.append(FrameLayer(in_dim, channels, context))
            in_dim = channels
        super().__init__(layers)
        self.out_dim = in_dim

    @classmethod
    def taps(cls) -> int:
        """Number of layers the phone branch can be fed from."""
        return len(cls.contexts)

    def tap_dim(self, layer: int) -> int:
        return self[layer].out_dim

    def forward(self, x: Tensor, mask: Tensor | None, tap: int) -> Taps:  # type: ignore[override]
        phone_in = x
        for i, layer in enumerate(self):
            x = layer(x, mask)
            if i == tap:
                phone_in = x
        return x, mask, phone_in

    def macs_per_frame(self) -> int:
        return sum(layer.macs_per_frame() for layer in self)


class EtdnnTrunk(TdnnTrunk):
    name, contexts = "etdnn", ETDNN


class SqueezeExcite(nn.Module):
    """Channel gates from the (masked) mean over time: x * sigmoid(W2 relu(W1 mean))."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        gate = torch.sigmoid(self.linear2(torch.relu(self.linear1(masked_mean(x, mask)))))
        return x * gate.unsqueeze(1)


class Res2Layer(nn.Module):
    """Res2Net: `scale` channel groups; each group but the last gets a dilated TDNN layer of
    itself (from the second group on, plus the previous layer's output); the last group passes
    through unchanged (as WeSpeaker's Res2Conv1dReluBn). `scale` 1: one layer on all channels."""

    def __init__(self, channels: int, scale: int, dilation: int) -> None:
        super().__init__()
        if channels % scale:
            raise ApmError(
                f"'model.channels' {channels} must be a multiple of 'model.res2net_scale' {scale}"
            )
        self.width = channels // scale
        context = (-dilation, 0, dilation)
        count = max(1, scale - 1)
        width = channels if scale == 1 else self.width
        self.convs = nn.ModuleList(FrameLayer(width, width, context) for _ in range(count))
        self.scale = scale

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if self.scale == 1:
            return self.convs[0](x, mask)
        groups = torch.split(x, self.width, dim=2)
        out, prev = [], None
        for i, conv in enumerate(self.convs):
            prev = conv(groups[i] if prev is None else groups[i] + prev, mask)
            out.append(prev)
        out.append(groups[-1])
        return torch.cat(out, dim=2)

    def macs_per_frame(self) -> int:
        return sum(conv.macs_per_frame() for conv in self.convs)


class SERes2Block(nn.Module):
    """x + SE(1x1 -> Res2Net dilated k=3 -> 1x1)(x), every layer affine -> ReLU -> BN."""

    def __init__(self, channels: int, dilation: int, scale: int, se_channels: int) -> None:
        super().__init__()
        self.conv_in = FrameLayer(channels, channels, (0,))
        self.res2 = Res2Layer(channels, scale, dilation)
        self.conv_out = FrameLayer(channels, channels, (0,))
        self.se = SqueezeExcite(channels, se_channels)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        y = self.conv_out(self.res2(self.conv_in(x, mask), mask), mask)
        return x + self.se(y, mask)

    def macs_per_frame(self) -> int:
        return (
            self.conv_in.macs_per_frame()
            + self.res2.macs_per_frame()
            + self.conv_out.macs_per_frame()
        )


class EcapaTrunk(nn.Module):
    """ECAPA-TDNN's frame layers: layer1 (k=5), SE-Res2Net blocks of dilation 2, 3, 4; the
    output is the blocks' outputs side by side (multi-layer feature aggregation, 3C)."""

    name = "ecapa_tdnn"
    defaults: dict[str, Any] = {
        "channels": 512,
        "stats_channels": 1536,  # the 1x1 aggregation layer
        "embed_dim": 192,
        "res2net_scale": 8,  # Res2Net channel groups (channels must be a multiple)
        "se_channels": 128,  # squeeze-excitation bottleneck
        "attention_channels": 128,  # attentive statistics pooling bottleneck
    }
    pooling = "attentive"
    time_stride = 1
    DILATIONS = (2, 3, 4)

    def __init__(
        self, feat_dim: int, channels: int, res2net_scale: int, se_channels: int, **_: Any
    ) -> None:
        super().__init__()
        self.layer1 = FrameLayer(feat_dim, channels, (-2, -1, 0, 1, 2))
        self.blocks = nn.ModuleList(
            SERes2Block(channels, d, res2net_scale, se_channels) for d in self.DILATIONS
        )
        self.channels = channels
        self.out_dim = channels * len(self.DILATIONS)

    @classmethod
    def taps(cls) -> int:
        return 1 + len(cls.DILATIONS)

    def tap_dim(self, layer: int) -> int:
        return self.channels

    def forward(self, x: Tensor, mask: Tensor | None, tap: int) -> Taps:
        x = self.layer1(x, mask)
        phone_in, outs = x, []
        for i, block in enumerate(self.blocks, 1):
            x = block(x, mask)
            outs.append(x)
            if i == tap:
                phone_in = x
        return torch.cat(outs, dim=2), mask, phone_in

    def macs_per_frame(self) -> int:
        return self.layer1.macs_per_frame() + sum(b.macs_per_frame() for b in self.blocks)


def _mask4(x: Tensor, mask: Tensor | None) -> Tensor:
    """x [B, C, F, T] with the frames where mask [B, T] is False set to zero."""
    return x if mask is None else x * mask[:, None, None, :].to(x.dtype)


class BasicBlock(nn.Module):
    """ResNet basic block: relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x)); the
    shortcut is a strided 1x1 conv + BN when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = MaskedBatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = MaskedBatchNorm2d(planes)
        self.shortcut_conv: nn.Conv2d | None = None
        self.shortcut_bn: MaskedBatchNorm2d | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut_conv = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            self.shortcut_bn = MaskedBatchNorm2d(planes)

    def forward(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """x [B, C, F, T] (zero at masked frames), mask [B, T] -> (y, mask at y's rate)."""
        if mask is not None and self.stride != 1:
            mask = mask[:, :: self.stride]
        h = _mask4(torch.relu(self.bn1(self.conv1(x), mask)), mask)
        y = self.bn2(self.conv2(h), mask)
        if self.shortcut_conv is not None and self.shortcut_bn is not None:
            y = y + self.shortcut_bn(self.shortcut_conv(x), mask)
        else:
            y = y + x
        return _mask4(torch.relu(y), mask), mask

    def macs_per_position(self) -> int:
        """MACs per output (frequency, time) position."""
        convs = [self.conv1, self.conv2] + ([self.shortcut_conv] if self.shortcut_conv else [])
        return sum(c.weight.numel() for c in convs)


def _halved(size: int, times: int) -> int:
    """The size after `times` stride-2 convolutions (kernel 3 or 1, 'same' padding)."""
    for _ in range(times):
        size = math.ceil(size / 2)
    return size


class ResNetTrunk(nn.Module):
    """Thin ResNet34 on the fbank as a 1-channel image [B, 1, F, T]; see the module doc."""

    name = "resnet34"
    defaults: dict[str, Any] = {"channels": 32, "embed_dim": 256}  # channels: base width
    pooling = "stats"
    BLOCKS: Sequence[int] = (3, 4, 6, 3)
    STRIDES: Sequence[int] = (1, 2, 2, 2)

    def __init__(self, feat_dim: int, channels: int, **_: Any) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = MaskedBatchNorm2d(channels)
        self.stages = nn.ModuleList()
        in_planes = channels
        self.tap_dims = [channels * feat_dim]
        self.time_strides = [1]
        self.freqs = [feat_dim]
        halvings = 0
        for i, (blocks, stride) in enumerate(zip(self.BLOCKS, self.STRIDES, strict=True)):
            planes = channels * 2**i
            stage = nn.ModuleList()
            for j in range(blocks):
                stage.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            self.stages.append(stage)
            halvings += stride == 2
            self.freqs.append(_halved(feat_dim, halvings))
            self.time_strides.append(2**halvings)
            self.tap_dims.append(planes * self.freqs[-1])
        self.out_dim = self.tap_dims[-1]
        self.time_stride = self.time_strides[-1]

    @classmethod
    def taps(cls) -> int:
        return 1 + len(cls.BLOCKS)

    def tap_dim(self, layer: int) -> int:
        return self.tap_dims[layer]

    @staticmethod
    def _frames(x: Tensor) -> Tensor:
        """[B, C, F, T] -> [B, T, C*F] (channel-major, as WeSpeaker's reshape)."""
        return x.flatten(1, 2).transpose(1, 2)

    def forward(self, x: Tensor, mask: Tensor | None, tap: int) -> Taps:
        frames = x.shape[1]
        h = x.transpose(1, 2).unsqueeze(1)  # [B, 1, F, T]
        h = _mask4(torch.relu(self.bn1(self.conv1(h), mask)), mask)
        phone_in = self._frames(h)
        for i, stage in enumerate(self.stages, 1):
            for block in stage:
                h, mask = block(h, mask)
            if i == tap:
                phone_in = self._frames(h)
                stride = self.time_strides[i]
                if stride > 1:  # back to the input frame rate
                    phone_in = phone_in.repeat_interleave(stride, dim=1)[:, :frames]
        return self._frames(h), mask, phone_in

    def macs_per_frame(self) -> int:
        """MACs per input frame (a stage at time stride s runs on 1/s of the frames)."""
        macs = self.conv1.weight.numel() * self.freqs[0]
        for i, stage in enumerate(self.stages, 1):
            per_position = sum(block.macs_per_position() for block in stage)
            macs += per_position * self.freqs[i] // self.time_strides[i]
        return macs


TrunkClass = type[TdnnTrunk] | type[EcapaTrunk] | type[ResNetTrunk]
# The registry: `model.trunk` -> class. A new trunk is one class above and one line here.
TRUNKS: dict[str, TrunkClass] = {
    cls.name: cls for cls in (TdnnTrunk, EtdnnTrunk, EcapaTrunk, ResNetTrunk)
}


class AttentiveStatsPooling(nn.Module):
    """Attentive statistics pooling with global context (ECAPA-TDNN): per channel, softmax
    weights over the valid frames from tanh(W [x, mean, std]) and the weighted mean and
    standard deviation: [B, T, C] -> [B, 2C], in float32."""

    def __init__(self, channels: int, bottleneck: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.linear1 = nn.Linear(3 * channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)
        self.eps = eps

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            mean, std = stats_pooling(x, mask, self.eps).chunk(2, dim=1)
            frames = x.shape[1]
            glob = torch.cat([mean, std], dim=1).unsqueeze(1).expand(-1, frames, -1)
            context = torch.cat([x, glob], dim=2)
            scores = self.linear2(torch.tanh(self.linear1(context)))
            if mask is not None:
                scores = scores.masked_fill(~mask.unsqueeze(2), torch.finfo(scores.dtype).min)
            alpha = torch.softmax(scores, dim=1)
            if mask is not None:
                alpha = alpha * mask.unsqueeze(2).to(alpha.dtype)
            mu = (alpha * x).sum(dim=1)
            var = (alpha * (x - mu.unsqueeze(1)) ** 2).sum(dim=1)
            return torch.cat([mu, torch.sqrt(var.clamp(min=0.0) + self.eps)], dim=1)

    def macs_per_frame(self) -> int:
        return self.linear1.weight.numel() + self.linear2.weight.numel()


class StatsPooling(nn.Module):
    """Mean and standard deviation over the valid frames (`apm.nnet.layers.stats_pooling`)."""

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return stats_pooling(x, mask)

    def macs_per_frame(self) -> int:
        return 0


def build_pooling(kind: str, channels: int, options: dict[str, Any]) -> nn.Module:
    if kind == "attentive":
        return AttentiveStatsPooling(channels, options["attention_channels"])
    return StatsPooling()
