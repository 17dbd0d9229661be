"""apm.nnet: shapes, masking (padded batch == one by one), config checks, cost counting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from apm.nnet import FrameLayer, MaskedBatchNorm1d, build_model, stats_pooling
from apm.nnet.layers import _MaskedBatchNorm, context_to_conv, masked_batchnorm_reference
from apm.nnet.xvector import ETDNN, TDNN
from apm.utils import ApmError

SMALL = {"channels": 32, "stats_channels": 48, "embed_dim": 16, "phone_channels": 24}
FEAT, PHONES = 12, 7


def small_model(**over) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model({**SMALL, **over}, FEAT, PHONES)


def train_a_little(model: torch.nn.Module) -> None:
    """A few train-mode passes so BatchNorm running statistics are not the identity."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 40, FEAT) * 2 + 1)
    model.eval()


def test_shapes_and_embedding_is_first_segment_affine():
    model = small_model().eval()
    feats = torch.randn(3, 25, FEAT)
    out = model(feats, torch.ones(3, 25, dtype=torch.bool))
    assert out.embedding.shape == (3, 16) and out.classifier_input.shape == (3, 16)
    assert out.phone_logits.shape == (3, 25, PHONES)
    assert model.embed_dim == 16
    # the x-vector is the affine output, before ReLU: it has negative entries
    assert (out.embedding < 0).any()
    assert model(feats, None, phones=False).phone_logits is None
    assert torch.allclose(model(feats, None).embedding, out.embedding)


def test_no_phone_branch():
    model = small_model(phone_branch=False)
    assert model(torch.randn(2, 10, FEAT)).phone_logits is None
    assert not any("phone" in name for name, _ in model.named_parameters())
    with_branch = small_model()
    assert with_branch.num_parameters() > model.num_parameters()


def test_trunk_topologies_follow_the_paper():
    etdnn, tdnn = small_model(), small_model(trunk="tdnn")
    assert [layer.context for layer in etdnn.trunk] == list(ETDNN)
    assert list(ETDNN) == [
        (-2, -1, 0, 1, 2),
        (0,),
        (-2, 0, 2),
        (0,),
        (-3, 0, 3),
        (0,),
        (-4, 0, 4),
        (0,),
    ]
    assert [layer.context for layer in tdnn.trunk] == list(TDNN)
    assert etdnn.phone_layer == 7 and tdnn.phone_layer == 3


def test_context_to_conv():
    assert context_to_conv((-2, -1, 0, 1, 2)) == (5, 1)
    assert context_to_conv((-4, 0, 4)) == (3, 4)
    assert context_to_conv((0,)) == (1, 1)
    for bad in ((-2, 0, 3), (-3, -1, 0, 3), (1, 0, -1), ()):
        with pytest.raises(ApmError):
            context_to_conv(bad)


@pytest.mark.parametrize("context", [(-2, -1, 0, 1, 2), (-3, 0, 3), (0,)])
def test_frame_layer_is_a_dilated_convolution(context):
    """The spliced affine equals Conv1d with the same taps and zero 'same' padding."""
    torch.manual_seed(2)
    layer = FrameLayer(3, 4, context)
    x = torch.randn(2, 11, 3)
    kernel, dilation = context_to_conv(context)
    weight = layer.affine.weight.view(4, kernel, 3).permute(0, 2, 1)
    conv = F.conv1d(
        x.transpose(1, 2),
        weight,
        layer.affine.bias,
        padding=dilation * (kernel // 2),
        dilation=dilation,
    )
    assert torch.allclose(layer.affine(layer.splice(x)), conv.transpose(1, 2), atol=1e-5)


def test_phone_layer_selects_trunk_output():
    """The phone loss reaches trunk layers up to `phone_layer` and none after it."""
    model = small_model(phone_layer=2)
    assert model.phone_layer == 2 and small_model(phone_layer=-1).phone_layer == 7
    out = model(torch.randn(4, 30, FEAT))
    out.phone_logits.sum().backward()
    grads = [layer.affine.weight.grad for layer in model.trunk]
    assert all(g is not None and g.abs().sum() > 0 for g in grads[:3])
    assert all(g is None for g in grads[3:])


def test_padded_batch_equals_one_by_one():
    """Eval mode: a padded batch (with a VAD gap too) gives each segment's own outputs."""
    model = small_model()
    train_a_little(model)
    lengths = [30, 17, 9]
    segments = [torch.randn(n, FEAT) for n in lengths]
    vad = [torch.ones(n, dtype=torch.bool) for n in lengths]
    vad[0][10:14] = False  # frames dropped by VAD inside the first segment
    batch = torch.full((3, 30, FEAT), 7.0)  # junk in the padding must not matter
    mask = torch.zeros(3, 30, dtype=torch.bool)
    for i, (seg, v) in enumerate(zip(segments, vad, strict=True)):
        batch[i, : len(seg)] = seg
        mask[i, : len(seg)] = v
    out = model(batch, mask)
    for i, (seg, v) in enumerate(zip(segments, vad, strict=True)):
        single = model(seg[None], v[None])
        assert torch.allclose(out.embedding[i], single.embedding[0], atol=1e-5)
        n = len(seg)
        assert torch.allclose(out.phone_logits[i, :n], single.phone_logits[0], atol=1e-5)


def test_stats_pooling_uses_valid_frames_only():
    x = torch.randn(2, 12, 5)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, :12] = True
    mask[1, 2:9] = True
    x[1, 9:] = 1e4  # padding with large values
    pooled = stats_pooling(x, mask)
    for i in range(2):
        frames = x[i][mask[i]]
        expected = torch.cat([frames.mean(0), torch.sqrt(frames.var(0, unbiased=False) + 1e-5)])
        assert torch.allclose(pooled[i], expected, atol=1e-5)
    empty = stats_pooling(x, torch.zeros(2, 12, dtype=torch.bool))
    assert torch.isfinite(empty).all()


def test_masked_batchnorm_matches_batchnorm_on_valid_frames():
    torch.manual_seed(1)
    masked, plain = MaskedBatchNorm1d(4), torch.nn.BatchNorm1d(4)
    x = torch.randn(3, 10, 4) * 3 + 2
    mask = torch.rand(3, 10) > 0.4
    y = masked(x, mask)
    ref = plain(x[mask])
    assert torch.allclose(y[mask], ref, atol=1e-6)
    assert (y[~mask] == 0).all()
    assert torch.allclose(masked.running_mean, plain.running_mean)
    assert torch.allclose(masked.running_var, plain.running_var)


def test_masked_batchnorm_gradients_and_cumulative_momentum_match_batchnorm():
    torch.manual_seed(2)
    masked, plain = MaskedBatchNorm1d(4, momentum=None), torch.nn.BatchNorm1d(4, momentum=None)
    mask = torch.rand(3, 10) > 0.3
    for _ in range(3):
        x = (torch.randn(3, 10, 4) * 3 + 2).requires_grad_()
        xp = x.detach().clone().requires_grad_()
        (masked(x, mask) ** 2).sum().backward()
        (plain(xp[mask]) ** 2).sum().backward()
        assert torch.allclose(x.grad, xp.grad, atol=1e-5)
    assert torch.allclose(masked.running_mean, plain.running_mean)
    assert torch.allclose(masked.running_var, plain.running_var)
    assert masked.num_batches_tracked == plain.num_batches_tracked == 3


def _reference_step(bn, x, mask):
    """One training step of the pre-fusion formula on `bn`'s running statistics."""
    y, mean, var, count = masked_batchnorm_reference(x, mask, bn.weight, bn.bias, bn.eps)
    bn._update_running_stats(mean, var, count)
    return y


@pytest.mark.parametrize("padding", ["none", "some", "whole rows"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_fused_masked_batchnorm_equals_the_old_formula(padding, momentum):
    """The fused autograd node (`_MaskedBatchNorm`) computes what the masked sums computed:
    outputs, input/weight/bias gradients and running statistics, padded or not."""
    torch.manual_seed(3)
    new, old = MaskedBatchNorm1d(6, momentum=momentum), MaskedBatchNorm1d(6, momentum=momentum)
    weight, bias = torch.randn(6), torch.randn(6)
    with torch.no_grad():
        for bn in (new, old):
            bn.weight.copy_(weight)
            bn.bias.copy_(bias)
    for step in range(3):
        x = (torch.randn(4, 15, 6) * 3 + 2).requires_grad_()
        xo = x.detach().clone().requires_grad_()
        mask = torch.ones(4, 15, dtype=torch.bool)
        if padding == "some":
            mask = torch.rand(4, 15) > 0.3
        elif padding == "whole rows":
            mask[1:, 9 + step :] = False
            mask[2] = False
        g = torch.randn(4, 15, 6)
        y, yo = new(x, mask), _reference_step(old, xo, mask)
        assert torch.allclose(y, yo, atol=1e-5, rtol=1e-5)
        assert (y[~mask] == 0).all()
        (y * g).sum().backward()
        (yo * g).sum().backward()
        assert torch.allclose(x.grad, xo.grad, atol=1e-5, rtol=1e-4)
        assert (x.grad[~mask] == 0).all()
        for a, b in ((new.weight, old.weight), (new.bias, old.bias)):
            assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-4)
            a.grad = b.grad = None
    assert torch.allclose(new.running_mean, old.running_mean, atol=1e-6)
    assert torch.allclose(new.running_var, old.running_var, atol=1e-6)
    assert new.num_batches_tracked == old.num_batches_tracked == 3


def test_fused_masked_batchnorm_backward_passes_gradcheck():
    torch.manual_seed(4)
    x = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(20) > 0.25).double()
    weight = torch.randn(3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(x, weight, bias):
        return _MaskedBatchNorm.apply(x, w, weight, bias, 1e-5)[0]

    assert torch.autograd.gradcheck(f, (x, weight, bias))


def test_masked_batchnorm_without_affine_equals_the_old_formula():
    torch.manual_seed(5)
    bn = MaskedBatchNorm1d(5, affine=False)
    x = torch.randn(3, 8, 5) * 2 + 1
    mask = torch.rand(3, 8) > 0.3
    ref = masked_batchnorm_reference(x, mask, None, None, bn.eps)[0]
    assert torch.allclose(bn(x, mask), ref, atol=1e-5)


def test_all_valid_mask_equals_no_mask():
    """The caller may pass the mask of an unpadded batch or None: same outputs either way."""
    feats = torch.randn(3, 30, FEAT)
    full = torch.ones(3, 30, dtype=torch.bool)
    for train in (True, False):
        a, b = small_model().train(train), small_model().train(train)
        out_mask, out_none = a(feats, full), b(feats, None)
        assert torch.allclose(out_mask.embedding, out_none.embedding, atol=1e-4)
        assert torch.allclose(out_mask.phone_logits, out_none.phone_logits, atol=1e-4)


@pytest.mark.parametrize("padded", [False, True])
def test_forward_traces_without_graph_break(padded):
    """torch.compile sees one graph for training forwards, padded or not (no data-dependent
    branch, no data-dependent shape)."""
    model = small_model().train()
    feats = torch.randn(3, 30, FEAT)
    mask = torch.ones(3, 30, dtype=torch.bool)
    mask[1, 20:] = False
    explained = torch._dynamo.explain(model)(feats, mask if padded else None)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


def test_fullgraph_compiled_forward_equals_eager():
    model = small_model().eval()
    train_a_little(model)
    feats = torch.randn(2, 25, FEAT)
    mask = torch.ones(2, 25, dtype=torch.bool)
    mask[0, 18:] = False
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        out, ref = compiled(feats, mask), model(feats, mask)
    assert torch.allclose(out.embedding, ref.embedding, atol=1e-5)


def test_bf16_and_fp16_autocast_forward_is_finite():
    model = small_model().train()
    feats = torch.randn(3, 40, FEAT) * 10
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 25:] = False
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            out = model(feats, mask)
        assert torch.isfinite(out.embedding.float()).all()
        assert torch.isfinite(out.phone_logits.float()).all()


def test_macs_per_frame_by_hand():
    model = build_model(
        {
            "trunk": "tdnn",
            "channels": 10,
            "stats_channels": 20,
            "embed_dim": 6,
            "phone_channels": 8,
            "phone_hidden_layers": 2,
        },
        4,
        5,
    )
    trunk = 4 * 10 * 5 + 10 * 10 * 3 + 10 * 10 * 3 + 10 * 10
    stats = 10 * 20
    phone = 10 * 8 + 8 * 8 + 8 * 5
    assert model.macs_per_frame(phones=False) == trunk + stats
    assert model.macs_per_frame() == trunk + stats + phone
    assert model.macs_per_segment() == 40 * 6 + 6 * 6


@pytest.mark.parametrize(
    "cfg, fragment",
    [
        ({"chanels": 64}, r"unknown keys \['chanels'\]; valid keys are \['channels'"),
        ({"trunk": "resnet"}, "etdnn"),
        ({"phone_layer": 8}, "phone_layer"),
        ({"channels": 0}, "channels"),
        ({"channels": 1.5}, "integer"),
        ({"channels": "1e3"}, "'model.channels' is '1e3'; it must be an integer"),
    ],
)
def test_bad_model_config_is_an_apm_error(cfg, fragment):
    with pytest.raises(ApmError, match=fragment):
        build_model(cfg, FEAT, PHONES)


def test_whole_float_sizes_are_used_as_integers():
    model = small_model(channels=32.0, stats_channels=48.0, phone_layer=-1.0)
    reference = small_model()
    assert model.phone_layer == reference.phone_layer and isinstance(model.phone_layer, int)
    assert model.num_parameters() == reference.num_parameters()


def test_wrong_feature_dim_is_an_apm_error():
    with pytest.raises(ApmError, match="12-dim"):
        small_model()(torch.randn(2, 10, FEAT + 1))
