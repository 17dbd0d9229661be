"""apm.losses: the margin family, APM reductions, confidence, multi-task loss, warm-up."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from apm.losses import (
    MarginScheduler,
    MarginSoftmax,
    build_classifier,
    build_loss,
    phone_confidence,
)
from apm.nnet import build_model
from apm.train.config import load_system_config
from apm.utils import ApmError

ROOT = Path(__file__).resolve().parents[1]

S, M = 30.0, 0.2


def classifier(kind: str, flavour: str = "am", margin: float = M, seed: int = 0) -> MarginSoftmax:
    torch.manual_seed(seed)
    return build_classifier(kind, 8, 5, margin=margin, scale=S, flavour=flavour)


def random_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 8, generator=g), torch.randint(0, 5, (6,), generator=g)


def grads(module: MarginSoftmax, x: torch.Tensor, y: torch.Tensor, **kw) -> tuple:
    x = x.clone().requires_grad_(True)
    module.zero_grad()
    loss, logits = module(x, y, **kw)
    loss.backward()
    return loss.detach(), logits.detach(), x.grad, module.weight.grad.clone()


@pytest.mark.parametrize("flavour", ["am", "aam"])
def test_apm_with_confidence_one_equals_constant_margin(flavour):
    x, y = random_batch()
    ref = grads(classifier(flavour), x, y)
    apm = grads(classifier("apm", flavour), x, y, confidence=torch.ones(6))
    for a, b in zip(ref, apm, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_am_with_zero_margin_is_cosine_softmax():
    x, y = random_batch()
    am = classifier("am", margin=0.0)
    loss, logits = am(x, y)
    cos = F.normalize(x, dim=1) @ F.normalize(am.weight, dim=1).t()
    assert torch.allclose(logits, S * cos, atol=1e-5)
    assert torch.allclose(loss, F.cross_entropy(S * cos, y), atol=1e-6)
    assert torch.allclose(am.scores(x), logits, atol=1e-6)


def two_d(kind: str, flavour: str = "am", margin: float = M) -> MarginSoftmax:
    """Classes at angles 0 and 90 degrees in the plane, scale 2 (small, so values are O(1))."""
    module = build_classifier(kind, 2, 2, margin=margin, scale=2.0, flavour=flavour)
    if kind == "softmax":
        module.linear.weight.data = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        module.linear.bias.data = torch.tensor([0.5, -0.5])
    else:
        module.weight.data = torch.tensor([[3.0, 0.0], [0.0, 0.5]])  # norms must not matter
    return module


def ce2(target: float, other: float) -> float:
    """Two-class cross-entropy with the target logit first, by hand."""
    return -target + math.log(math.exp(target) + math.exp(other))


def test_hand_checked_values():
    phi = math.radians(30)  # the embedding is 30 degrees from class 0, 60 from class 1
    x = torch.tensor([[2 * math.cos(phi), 2 * math.sin(phi)]])
    y = torch.tensor([0])
    c0, c1 = math.cos(phi), math.sin(phi)
    # softmax: logits W x + b
    loss, logits = two_d("softmax")(x, y)
    z0, z1 = 2 * c0 + 0.5, 4 * c1 - 0.5
    assert logits.tolist()[0] == pytest.approx([z0, z1], abs=1e-5)
    assert loss.item() == pytest.approx(ce2(z0, z1), abs=1e-5)
    # am: s (cos - m)
    loss, logits = two_d("am")(x, y)
    assert logits.tolist()[0] == pytest.approx([2 * (c0 - M), 2 * c1], abs=1e-5)
    assert loss.item() == pytest.approx(ce2(2 * (c0 - M), 2 * c1), abs=1e-5)
    # aam: s cos(theta + m)
    loss, _ = two_d("aam")(x, y)
    assert loss.item() == pytest.approx(ce2(2 * math.cos(phi + M), 2 * c1), abs=1e-5)
    # apm, am flavour, c = 0.25: margin 0.05
    loss, _, margins = two_d("apm").forward_with_margins(x, y, torch.tensor([0.25]))
    assert margins.tolist() == pytest.approx([0.05])
    assert loss.item() == pytest.approx(ce2(2 * (c0 - 0.05), 2 * c1), abs=1e-5)
    # apm, aam flavour, c = 0.5: margin 0.1
    loss, _ = two_d("apm", "aam")(x, y, torch.tensor([0.5]))
    assert loss.item() == pytest.approx(ce2(2 * math.cos(phi + 0.1), 2 * c1), abs=1e-5)


def test_aam_past_pi_uses_continuous_monotonic_fallback():
    m = 0.5
    module = two_d("aam", margin=m)
    angles = torch.linspace(math.pi - 1.0, math.pi - 1e-3, 200)
    x = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    _, logits = module(x, torch.zeros(200, dtype=torch.long))
    target = logits[:, 0] / 2.0
    beyond = angles + m > math.pi
    expected = torch.where(beyond, torch.cos(angles) - (1 - math.cos(m)), torch.cos(angles + m))
    assert torch.allclose(target, expected, atol=1e-5)
    assert (target[1:] <= target[:-1] + 1e-6).all()  # decreasing in the angle
    # continuity at theta = pi - m: cos(pi) == cos(pi - m) - (1 - cos m)
    assert math.cos(math.pi) == pytest.approx(math.cos(math.pi - m) - (1 - math.cos(m)))


@pytest.mark.parametrize(
    "kind, flavour", [("am", "am"), ("aam", "am"), ("apm", "aam"), ("softmax", "am")]
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_finite_under_autocast_near_zero_and_pi(kind, flavour, dtype):
    module = classifier(kind, flavour)
    w = module.weight.detach() if kind != "softmax" else torch.randn(5, 8)
    # embeddings exactly on a class direction (angle 0) and exactly opposite it (angle pi)
    x = torch.cat([w[:3] * 100, -w[:3] * 100]).to(dtype).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.autocast("cpu", dtype=dtype):
        loss, logits = module(x, y, confidence=torch.ones(6, dtype=dtype))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits).all()
    assert torch.isfinite(x.grad).all()
    params = [p.grad for p in module.parameters()]
    assert all(torch.isfinite(g).all() for g in params)


def small_model(phone_branch: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = {
        "channels": 16,
        "stats_channels": 24,
        "embed_dim": 8,
        "phone_channels": 16,
        "phone_branch": phone_branch,
    }
    return build_model(cfg, 6, 4)


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(4, 20, 6, generator=g)
    mask = torch.ones(4, 20, dtype=torch.bool)
    mask[1, 12:] = False
    phones = torch.randint(-1, 4, (4, 20), generator=g)
    return feats, mask, phones, torch.tensor([0, 1, 2, 1])


def test_no_gradient_reaches_phone_branch_through_confidence():
    model = small_model()
    crit = build_loss({"kind": "apm", "margin": 0.3}, model.embed_dim, 3)
    feats, mask, phones, langs = batch()
    res = crit(model(feats, mask), langs, phones, mask)
    assert not res.confidence.requires_grad and not res.margins.requires_grad
    res.lang_loss.backward()
    branch = [*model.phone_layers.parameters(), *model.phone_out.parameters()]
    assert all(p.grad is None or not p.grad.any() for p in branch)
    assert model.trunk[0].affine.weight.grad.any()
    # ... while L_phone does train it
    model.zero_grad()
    crit(model(feats, mask), langs, phones, mask).phone_loss.backward()
    assert all(p.grad is not None and p.grad.any() for p in model.phone_out.parameters())


def test_multitask_total_and_phone_loss_ignores_masked_and_unlabelled_frames():
    model = small_model()
    crit = build_loss({"kind": "aam", "phone_weight": 0.5}, model.embed_dim, 3)
    feats, mask, phones, langs = batch()
    out = model(feats, mask)
    res = crit(out, langs, phones, mask)
    keep = mask & (phones >= 0)
    expected = F.cross_entropy(out.phone_logits[keep], phones[keep])
    assert res.phone_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert res.loss.item() == pytest.approx(res.lang_loss.item() + 0.5 * expected.item(), rel=1e-5)
    assert res.margins.tolist() == pytest.approx([0.2] * 4)
    assert res.logits.shape == (4, 3) and res.confidence.shape == (4,)
    assert torch.allclose(crit.scores(out), crit.classifier.scores(out.classifier_input))
    no_labels = crit(out, langs, None, mask)
    assert no_labels.phone_loss is None and torch.equal(no_labels.loss, no_labels.lang_loss)


def test_softmax_has_zero_margins_and_apm_needs_the_phone_branch():
    model = small_model(phone_branch=False)
    feats, mask, _, langs = batch()
    out = model(feats, mask)
    res = build_loss({"kind": "softmax"}, model.embed_dim, 3)(out, langs, None, mask)
    assert not res.margins.any() and res.confidence is None
    with pytest.raises(ApmError, match="phone_branch"):
        build_loss({"kind": "apm"}, model.embed_dim, 3)(out, langs, None, mask)


def test_confidence_sources_by_hand():
    # two segments, 3 frames, 2 phones; segment 1's last frame is padding
    logits = torch.log(
        torch.tensor(
            [
                [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]],
                [[0.2, 0.8], [0.5, 0.5], [0.99, 0.01]],
            ]
        )
    )
    mask = torch.tensor([[True, True, True], [True, True, False]])
    conf = phone_confidence(logits, mask)
    assert conf.tolist() == pytest.approx([(0.9 + 0.6 + 0.7) / 3, (0.8 + 0.5) / 2])
    labels = torch.tensor([[0, 1, 1], [1, -1, 0]])
    acc = phone_confidence(logits, mask, "frame_accuracy", labels=labels)
    assert acc.tolist() == pytest.approx([2 / 3, 1.0])
    normed = phone_confidence(logits, mask, normalize=True)
    assert normed.mean().item() == pytest.approx(1.0)
    assert torch.allclose(normed, conf / conf.mean())
    assert phone_confidence(logits, torch.zeros(2, 3, dtype=torch.bool)).tolist() == [0.0, 0.0]
    with pytest.raises(ApmError, match="labels"):
        phone_confidence(logits, mask, "frame_accuracy")


def test_confidence_norm_keeps_mean_margin_at_m():
    model = small_model()
    crit = build_loss({"kind": "apm", "confidence_norm": True, "margin": 0.4}, model.embed_dim, 3)
    feats, mask, phones, langs = batch()
    res = crit(model(feats, mask), langs, phones, mask)
    assert res.margins.mean().item() == pytest.approx(0.4, rel=1e-5)
    assert torch.allclose(res.margins, 0.4 * res.confidence / res.confidence.mean())
    assert (res.margins >= 0).all()


def test_margin_warmup_schedule():
    module = classifier("aam", margin=0.3)
    sched = MarginScheduler(module, 0.3, warmup_epochs=4)
    assert module.margin == 0.0
    assert sched.step(1.0) == pytest.approx(0.075) and module.margin == pytest.approx(0.075)
    assert sched.step(2.5) == pytest.approx(0.1875)
    assert sched.step(10) == pytest.approx(0.3)
    MarginScheduler(module, 0.3, warmup_epochs=0)
    assert module.margin == pytest.approx(0.3)
    crit = build_loss({"kind": "am", "margin": 0.2, "margin_warmup_epochs": 2}, 8, 3)
    assert crit.classifier.margin == 0.0
    assert crit.set_epoch(1) == pytest.approx(0.1) and crit.classifier.margin == pytest.approx(0.1)
    assert build_loss({"kind": "softmax"}, 8, 3).set_epoch(5) == 0.0


@pytest.mark.parametrize(
    "cfg, fragment",
    [
        (
            {"margn": 0.2},
            r"unknown keys \['margn'\]; valid keys are \['confidence', 'confidence_norm'",
        ),
        ({"kind": "arcface"}, "softmax, am, aam, apm"),
        ({"flavour": "apm"}, "flavour"),
        ({"confidence": "entropy"}, "max_posterior"),
        ({"scale": 0}, "scale"),
        ({"margin": -0.1}, "margin"),
        ({"kind": "am", "margin": 5.0}, r"loss.margin 5 is out of range for am: .*0 <= m <= 1"),
        ({"kind": "aam", "margin": 1.6}, r"out of range for aam: .*0 <= m < 1.571"),
        ({"kind": "apm", "flavour": "aam", "margin": 2.0}, r"apm \(aam form\): .*m < 1.571"),
        ({"kind": "apm", "flavour": "am", "margin": 1.01}, r"apm \(am form\): .*m <= 1"),
    ],
)
def test_bad_loss_config_is_an_apm_error(cfg, fragment):
    with pytest.raises(ApmError, match=fragment):
        build_loss(cfg, 8, 3)


def test_margin_range_edges_and_the_config_file(tmp_path):
    build_loss({"kind": "am", "margin": 1.0}, 8, 3)  # the AM bound is included
    build_loss({"kind": "aam", "margin": 1.5}, 8, 3)
    build_loss({"kind": "softmax", "margin": 5.0}, 8, 3)  # no margin: not checked
    raw = yaml.safe_load((ROOT / "egs/olr/conf/am.yaml").read_text())
    raw["loss"]["margin"] = 5.0
    path = tmp_path / "am.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ApmError, match=f"{path}: loss.margin 5 is out of range"):
        load_system_config(path)  # when the config is read, before any training
    for conf in sorted(ROOT.glob("egs/*/conf/**/*.yaml")):
        if "loss" in (yaml.safe_load(conf.read_text()) or {}):
            load_system_config(conf)  # every shipped system stays valid


def test_label_range_checked():
    x, _ = random_batch()
    with pytest.raises(ApmError, match="0..4"):
        classifier("am")(x, torch.tensor([0, 1, 2, 3, 4, 5]))


@pytest.mark.parametrize(
    "kind, flavour", [("softmax", "am"), ("am", "am"), ("aam", "am"), ("apm", "aam")]
)
def test_each_kind_learns_separable_classes(kind, flavour):
    """Gradients point the right way: 3 well-separated clusters become perfectly classified
    by the margin-free scores and the loss drops."""
    torch.manual_seed(4)
    centres = torch.randn(3, 8) * 3
    y = torch.arange(3).repeat(20)
    x = centres[y] + torch.randn(60, 8) * 0.3
    module = build_classifier(kind, 8, 3, margin=0.3, scale=10.0, flavour=flavour)
    opt = torch.optim.Adam(module.parameters(), lr=0.05)
    conf = torch.full((60,), 0.7)
    first = module(x, y, conf)[0].item()
    for _ in range(60):
        opt.zero_grad()
        loss, _ = module(x, y, conf)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert (module.scores(x).argmax(1) == y).all()


def test_margin_registry_adds_a_kind_with_one_class_and_one_line(monkeypatch):
    """A new margin registered by name is built from the config like the shipped ones."""
    from apm.losses import MARGINS, margin

    class DoubleMargin(margin.MarginSoftmax):
        kind = "double_am"

        def _target_logit(self, cos_y, m):
            return cos_y - 2 * m

    monkeypatch.setitem(MARGINS, "double_am", DoubleMargin)
    crit = build_loss({"kind": "double_am", "margin": 0.1}, 8, 5)
    assert isinstance(crit.classifier, DoubleMargin)
    torch.manual_seed(0)
    ref = build_classifier("am", 8, 5, margin=0.2, scale=30.0)
    crit.classifier.load_state_dict(ref.state_dict())
    x, y = random_batch()
    assert torch.allclose(crit.classifier(x, y)[1], ref(x, y)[1], atol=1e-6)  # 2 * 0.1 == 0.2
    with pytest.raises(ApmError, match="softmax, am, aam, apm, double_am"):
        build_loss({"kind": "cosface"}, 8, 5)
