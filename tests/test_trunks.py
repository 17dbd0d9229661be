"""The trunk registry (apm.nnet.trunks): tdnn/etdnn built as before the registry, every trunk
with the phone branch, every margin kind, padded batches and exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from apm.losses import MARGINS, build_loss
from apm.nnet import FrameLayer, build_model
from apm.nnet.trunks import ETDNN, TDNN, TRUNKS
from apm.train.config import resolve_config
from apm.train.toy import toy_config
from apm.utils import ApmError

FEAT, PHONES, LANGS = 20, 7, 3
# Tiny sizes per trunk (a few thousand to ~100k parameters, milliseconds per pass).
SMALL = {
    "tdnn": {"channels": 16, "stats_channels": 32, "embed_dim": 16},
    "etdnn": {"channels": 16, "stats_channels": 32, "embed_dim": 16},
    "ecapa_tdnn": {
        "channels": 16,
        "stats_channels": 32,
        "embed_dim": 16,
        "res2net_scale": 4,
        "se_channels": 8,
        "attention_channels": 8,
    },
    "resnet34": {"channels": 4, "stats_channels": 32, "embed_dim": 16},
}


def small(trunk: str, seed: int = 0, **over) -> nn.Module:
    torch.manual_seed(seed)
    cfg = {"trunk": trunk, **SMALL[trunk], "phone_channels": 16, "phone_hidden_layers": 2}
    return build_model({**cfg, **over}, FEAT, PHONES)


def _padded(lengths: list[int], junk: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    segments = [torch.randn(n, FEAT, generator=g) for n in lengths]
    batch = torch.full((len(lengths), max(lengths), FEAT), junk)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for i, seg in enumerate(segments):
        batch[i, : len(seg)] = seg
        mask[i, : len(seg)] = True
    return segments, batch, mask


def _main_xvector(trunk: str, feat_dim: int, num_phones: int, channels: int, stats: int,
                  embed: int, phone_channels: int, phone_hidden: int) -> dict:  # fmt: skip
    """The state_dict of the x-vector as `apm/nnet/xvector.py` built it before the trunk
    registry (main at a81496a): the same modules created in the same order."""
    root = nn.Module()
    layers, in_dim = [], feat_dim
    for context in {"tdnn": TDNN, "etdnn": ETDNN}[trunk]:
        layers.append(FrameLayer(in_dim, channels, context))
        in_dim = channels
    root.trunk = nn.ModuleList(layers)
    root.stats_layer = FrameLayer(in_dim, stats, (0,))
    root.segment1 = nn.Linear(2 * stats, embed)
    root.segment1_bn = nn.BatchNorm1d(embed)
    root.segment2 = nn.Linear(embed, embed)
    root.segment2_bn = nn.BatchNorm1d(embed)
    root.phone_layers = nn.ModuleList()
    for _ in range(phone_hidden):
        root.phone_layers.append(FrameLayer(in_dim, phone_channels, (0,)))
        in_dim = phone_channels
    root.phone_out = nn.Linear(in_dim, num_phones)
    return root.state_dict()


@pytest.mark.parametrize("trunk", ["tdnn", "etdnn"])
def test_tdnn_and_etdnn_build_exactly_as_before_the_registry(trunk):
    """Same seed -> the same state_dict (keys, order, values) as the pre-registry code, so
    committed checkpoints load and seeded runs initialise as they did."""
    torch.manual_seed(5)
    before = _main_xvector(trunk, 40, 30, 64, 96, 32, 48, 3)
    torch.manual_seed(5)
    cfg = {"trunk": trunk, "channels": 64, "stats_channels": 96, "embed_dim": 32,
           "phone_channels": 48, "phone_hidden_layers": 3}  # fmt: skip
    after = build_model(cfg, 40, 30).state_dict()
    assert list(after) == list(before)
    for key in before:
        assert torch.equal(after[key], before[key]), key


def test_tdnn_config_resolves_to_the_same_keys_as_before():
    """A tdnn/etdnn system's resolved `model` section (exp/<system>/config.yaml) is unchanged:
    trunk options only appear for the trunks that have them."""
    keys = ["trunk", "channels", "stats_channels", "embed_dim", "phone_branch", "phone_layer",
            "phone_channels", "phone_hidden_layers"]  # fmt: skip
    assert list(resolve_config(toy_config(), "toy")["model"]) == keys
    raw = toy_config()
    raw["model"] = {"trunk": "ecapa_tdnn"}
    model = resolve_config(raw, "toy")["model"]
    assert model["stats_channels"] == 1536 and model["res2net_scale"] == 8


def test_unknown_trunk_lists_the_known_ones():
    raw = toy_config()
    raw["model"]["trunk"] = "resnet"
    with pytest.raises(ApmError, match="'model.trunk' is 'resnet'; the known trunks are tdnn, "
                       "etdnn, ecapa_tdnn, resnet34"):  # fmt: skip
        resolve_config(raw, "conf/x.yaml")
    with pytest.raises(ApmError, match=r"unknown keys \['res2net_scale'\]"):
        build_model({"trunk": "tdnn", "res2net_scale": 4}, FEAT, PHONES)
    with pytest.raises(ApmError, match="multiple of 'model.res2net_scale'"):
        small("ecapa_tdnn", channels=18)
    with pytest.raises(ApmError, match="resnet34 trunk has 5 layers"):
        small("resnet34", phone_layer=5)


@pytest.mark.parametrize("trunk", list(TRUNKS))
def test_padded_batch_equals_one_by_one(trunk):
    """Eval mode: each segment of a padded batch gets its own embedding and phone logits,
    whatever the padding holds (resnet34 too, whose later stages run at 1/2-1/8 frame rate)."""
    model = small(trunk)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 40, FEAT) * 2 + 1)
    model.eval()
    lengths = [37, 22, 9]
    segments, batch, mask = _padded(lengths, 7.0)
    with torch.no_grad():
        out = model(batch, mask)
        for i, seg in enumerate(segments):
            single = model(seg[None], None)
            torch.testing.assert_close(out.embedding[i], single.embedding[0], atol=1e-5, rtol=0)
            n = len(seg)
            torch.testing.assert_close(
                out.phone_logits[i, :n], single.phone_logits[0], atol=1e-5, rtol=0
            )


@pytest.mark.parametrize("trunk", list(TRUNKS))
def test_training_ignores_what_padding_holds(trunk):
    """Train mode: batch statistics use valid frames only, so the junk in padded frames
    changes neither the outputs, the gradients nor the BatchNorm running statistics."""
    runs = []
    for junk in (0.0, 50.0):
        model = small(trunk).train()
        _, batch, mask = _padded([40, 25, 13], junk)
        out = model(batch, mask)
        loss = out.classifier_input.square().sum() + (out.phone_logits * mask.unsqueeze(2)).sum()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        buffers = [b.clone() for b in model.buffers()]
        runs.append((out.embedding.detach(), grads, buffers))
    (emb_a, grads_a, bufs_a), (emb_b, grads_b, bufs_b) = runs
    torch.testing.assert_close(emb_a, emb_b, atol=1e-5, rtol=1e-5)
    assert len(grads_a) == len(grads_b) == sum(1 for _ in small(trunk).parameters())
    for a, b in zip(grads_a + bufs_a, grads_b + bufs_b, strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", list(MARGINS))
@pytest.mark.parametrize("trunk", list(TRUNKS))
def test_every_trunk_takes_every_margin_and_the_phone_loss(trunk, kind):
    """The phone branch gives frame logits at the input frame rate and the multi-task loss
    (APM included, whose margin needs the phone branch's confidence) trains every layer."""
    model = small(trunk).train()
    crit = build_loss({"kind": kind, "margin": 0.2}, model.embed_dim, LANGS)
    _, batch, mask = _padded([30, 30, 21, 12], 0.0)
    out = model(batch, mask)
    assert out.phone_logits.shape == (4, 30, PHONES)
    langs = torch.tensor([0, 1, 2, 1])
    phones = torch.randint(0, PHONES, (4, 30), generator=torch.Generator().manual_seed(0))
    result = crit(out, langs, phones, mask)
    assert torch.isfinite(result.loss) and result.phone_loss is not None
    if kind == "apm":
        assert (result.margins > 0).all() and not torch.equal(result.margins, result.margins[:1])
    result.loss.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert unused == []


@pytest.mark.parametrize("trunk", list(TRUNKS))
def test_phone_layer_taps_every_trunk_layer(trunk):
    """Each tap feeds the branch at the input frame rate; the phone loss stops at the tap."""
    taps = TRUNKS[trunk].taps()
    for tap in (0, taps - 1):
        model = small(trunk, phone_layer=tap)
        out = model(torch.randn(2, 33, FEAT))
        assert out.phone_logits.shape == (2, 33, PHONES)
    model = small(trunk, phone_layer=0)
    model(torch.randn(2, 33, FEAT)).phone_logits.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("trunk.")}
    assert any(g is not None for g in grads.values()) and any(g is None for g in grads.values())


@pytest.mark.parametrize("trunk", list(TRUNKS))
def test_torchscript_and_onnx_export_match_eager(trunk, tmp_path):
    """The exported graphs (traced at one length) give the eager x-vector and language
    scores at other lengths, as apm.infer.export writes them, for every trunk."""
    import onnxruntime

    from apm.backend.config import BackendConfig
    from apm.backend.models import ClassifierBackend
    from apm.backend.store import FittedBackend
    from apm.infer.export import ExportedNetwork, write_export

    model = small(trunk)
    crit = build_loss({"kind": "apm"}, model.embed_dim, LANGS)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 40, FEAT))
    system = type("System", (), {"model": model.eval(), "crit": crit.eval(),
                                 "config": {"extract": {"layer": "embedding"}}})  # fmt: skip
    languages = [f"l{i}" for i in range(LANGS)]
    backend = FittedBackend(BackendConfig(primary="classifier", backends=["classifier"]),
                            languages, None, {"classifier": ClassifierBackend()})  # fmt: skip
    net = ExportedNetwork(system, backend, "classifier", "utterance").eval()
    onnx_path = write_export(net, "onnx", tmp_path / "x.onnx", languages)
    ts_path = write_export(net, "torchscript", tmp_path / "x.pt", languages)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(ts_path))
    for frames in (31, 87, 300):
        feats = torch.randn(1, frames, FEAT, generator=torch.Generator().manual_seed(frames))
        with torch.no_grad():
            post, emb = net(feats)
            ts_post, ts_emb = scripted(feats)
        onnx_post, onnx_emb = session.run(None, {"feats": feats.numpy()})
        for p, e in ((ts_post.numpy(), ts_emb.numpy()), (onnx_post, onnx_emb)):
            np.testing.assert_allclose(p, post.numpy(), atol=1e-4)
            np.testing.assert_allclose(e, emb.numpy(), atol=1e-4)


def test_macs_count_every_layer():
    """MACs per frame grow with each trunk's width; resnet34's strided stages are counted at
    their own frame rate (fewer MACs than the same layers at full rate)."""
    for trunk in TRUNKS:
        narrow, wide = small(trunk), small(trunk, channels=2 * SMALL[trunk]["channels"])
        assert 0 < narrow.macs_per_frame(phones=False) < wide.macs_per_frame(phones=False)
        assert narrow.macs_per_frame() > narrow.macs_per_frame(phones=False)
    resnet = small("resnet34").trunk
    full_rate = sum(
        sum(block.macs_per_position() for block in stage) * resnet.freqs[i]
        for i, stage in enumerate(resnet.stages, 1)
    )
    assert resnet.macs_per_frame() < full_rate


@pytest.fixture(scope="module")
def toy_corpus(tmp_path_factory):
    from apm.train.toy import make_toy_corpus

    return make_toy_corpus(tmp_path_factory.mktemp("toy"), num_langs=LANGS, utts_per_lang=6)


@pytest.mark.slow
@pytest.mark.parametrize("trunk", list(TRUNKS))
def test_train_extract_score_on_the_toy_corpus(trunk, toy_corpus, tmp_path):
    """Stages 4-6 with each trunk on the toy corpus: two epochs of APM multi-task training
    (resumable checkpoints, final.pt read back weights-only), x-vectors, LR and classifier
    back-end scores with a Cavg."""
    from apm.backend import BackendConfig, score_system
    from apm.data.trials import Trial, write_trials
    from apm.extract.xvectors import ExtractJob, run_extraction
    from apm.metrics import align_trials, challenge_cavg, read_scores
    from apm.nnet import checkpoint
    from apm.train.job import TrainJob, run_training
    from apm.utils import write_kv

    raw = toy_config(epochs=2, average_last=2, bn_recalibration_batches=2)
    raw["model"] = {"trunk": trunk, **SMALL[trunk], "phone_channels": 16,
                    "phone_hidden_layers": 1}  # fmt: skip
    cfg = resolve_config(raw, "toy", seed=1)
    exp, data = tmp_path / "exp", tmp_path / "data"
    run_training(TrainJob(cfg, toy_corpus.fbank_dir, exp, toy_corpus.ali_dir))
    final = checkpoint.load(exp / "final.pt")
    assert final["config"]["model"]["trunk"] == trunk and final["averaged_epochs"] == [1, 2]
    assert checkpoint.load(exp / "checkpoints" / "epoch_2.pt")["epoch"] == 2
    run_extraction(ExtractJob(exp, toy_corpus.fbank_dir, exp / "xvectors" / "train", device="cpu"))
    utt2lang = {
        line.split()[0]: line.split()[0].split("_")[0]
        for line in (exp / "xvectors" / "train" / "xvector.scp").read_text().splitlines()
    }
    assert len(utt2lang) == LANGS * 6
    write_kv(data / "train" / "utt2lang", utt2lang)
    trials = [Trial(t, u, t == lang) for u, lang in sorted(utt2lang.items())
              for t in toy_corpus.languages]  # fmt: skip
    write_trials(data / "train" / "trials", trials)  # the training set scored as a task
    conf = BackendConfig(primary="lr", backends=["lr", "classifier"])
    score_system(exp, data, "train", ["train"], conf)
    for name in ("train.score", "train.classifier.score"):
        scores = read_scores(exp / "scores" / name)
        assert scores.languages == toy_corpus.languages and len(scores.utts) == len(utt2lang)
        assert np.isfinite(scores.matrix).all()
        trial_scores = align_trials(trials, scores, data / "train" / "trials")
        assert 0.0 <= challenge_cavg(trial_scores).cavg <= 1.0


def test_recipe_configs_of_every_trunk_and_margin(repo_root):
    """conf/{ecapa,resnet34}_<margin>.yaml (CPU-sized) and conf/paper/ (paper-sized): one per
    trunk and margin system, with the loss and schedule of the E-TDNN system of that name."""
    from apm.train.config import load_system_config

    conf = repo_root / "egs/olr/conf"
    margins = ["softmax", "am", "aam", "apm_am", "apm_aam"]
    for folder in (conf, conf / "paper"):
        for prefix, trunk in (("ecapa", "ecapa_tdnn"), ("resnet34", "resnet34")):
            found = sorted(p.stem for p in folder.glob(f"{prefix}_*.yaml"))
            assert found == sorted(f"{prefix}_{m}" for m in margins)
            for margin in margins:
                cfg = load_system_config(folder / f"{prefix}_{margin}.yaml")
                base = load_system_config(folder / f"{margin}.yaml")
                assert cfg["model"]["trunk"] == trunk and cfg["model"]["phone_branch"]
                assert cfg["loss"] == base["loss"] and cfg["train"] == base["train"]
                if folder == conf or margin == "apm_am":
                    build_model(cfg["model"], 40, 40)


@pytest.mark.parametrize("trunk", ["ecapa_tdnn", "resnet34"])
def test_bf16_and_fp16_autocast_training_is_finite(trunk):
    model = small(trunk).train()
    _, batch, mask = _padded([40, 26, 11], 0.0)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            out = model(batch * 10, mask)
        assert torch.isfinite(out.embedding.float()).all()
        assert torch.isfinite(out.phone_logits.float()).all()
        (out.embedding.float().square().sum() + out.phone_logits.float().sum()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_resnet34_recipe_sized_masked_backward(repo_root):
    """The recipe's CPU-sized ResNet34 on 40-dim fbank trains on a padded batch: with
    MaskedBatchNorm2d's output left in permuted strides, conv2d's backward crashed the process
    (double free, torch 2.13 CPU oneDNN) at these sizes though not at the tiny ones above."""
    import yaml

    cfg = yaml.safe_load((repo_root / "egs/olr/conf/resnet34_apm_am.yaml").read_text())["model"]
    torch.manual_seed(0)
    model = build_model(cfg, 40, PHONES).train()
    batch, mask = torch.randn(4, 200, 40), torch.ones(4, 200, dtype=torch.bool)
    mask[::2, 150:] = False
    out = model(batch, mask)
    (out.classifier_input.square().sum() + out.phone_logits.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
