"""Stage 4 training: config, chunk batches, loss goes down, resume, bad input."""

from __future__ import annotations

import shutil

import kaldiio
import numpy as np
import pytest
import torch
import yaml

from apm.losses import build_loss
from apm.nnet import build_model, checkpoint
from apm.train.batches import ChunkBatches, gather, plan_epoch
from apm.train.config import load_system_config, resolve_config
from apm.train.data import load_corpus, split_validation
from apm.train.job import TrainJob, run_training
from apm.train.toy import make_toy_corpus, toy_config
from apm.train.trainer import Trainer, use_compile
from apm.utils.dist import init_distributed
from apm.utils.errors import ApmError


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_corpus(tmp_path_factory.mktemp("toy"), num_langs=3, utts_per_lang=8)


MODEL_KEY = "trunk.0.affine.weight"


def _cfg(**train):
    return resolve_config(toy_config(**train), "toy", seed=3)


def _corpus(toy, **kw):
    return load_corpus(toy.fbank_dir, toy.ali_dir, cmn="utterance", min_utt_frames=40, **kw)


def _copy_corpus(toy, tmp_path):
    shutil.copytree(toy.fbank_dir.parent, tmp_path / "c")
    return tmp_path / "c" / "fbank", tmp_path / "c" / "ali"


def test_config_rejects_unknown_keys_and_fills_defaults():
    with pytest.raises(ApmError, match="valid keys are .*batch_size"):
        resolve_config(toy_config(batchsize=3), "x.yaml")
    with pytest.raises(ApmError, match="unknown sections"):
        resolve_config({**toy_config(), "optim": {}}, "x.yaml")
    with pytest.raises(ApmError, match="x.yaml: model: unknown keys"):
        resolve_config({**toy_config(), "model": {"chanels": 3}}, "x.yaml")
    cfg = _cfg()
    assert cfg["train"]["optimizer"] == "adam" and cfg["model"]["trunk"] == "tdnn"
    assert cfg["loss"]["confidence"] == "max_posterior" and cfg["seed"] == 3


def test_corpus_keeps_voiced_frames_with_their_phones(toy):
    corpus = _corpus(toy)
    assert corpus.languages == toy.languages and corpus.num_phones == 12
    first = corpus.ids.index("l0_u000")
    ali = kaldiio.load_scp(str(toy.ali_dir / "ali.scp"))["l0_u000"]
    rows = slice(corpus.offsets[first], corpus.offsets[first + 1])
    np.testing.assert_array_equal(corpus.phones[rows], ali[10:-10])  # VAD drops 10 each side
    np.testing.assert_allclose(corpus.feats[rows].mean(0), 0, atol=1e-4)  # utterance CMN


def test_epoch_plan_is_seeded_and_ranks_split_the_global_batch(toy):
    corpus = _corpus(toy)
    cfg = _cfg(specaugment={"freq_masks": 2, "time_masks": 2})["train"]
    pool = np.arange(len(corpus.ids))
    a, b = plan_epoch(corpus, pool, cfg, 5, 1), plan_epoch(corpus, pool, cfg, 5, 1)
    np.testing.assert_array_equal(a.utts, b.utts)
    assert not np.array_equal(a.utts, plan_epoch(corpus, pool, cfg, 5, 2).utts)
    whole = ChunkBatches(corpus, a, cfg, 5, 1)[0]
    parts = [ChunkBatches(corpus, a, cfg, 5, 1, rank=r, world=2)[0] for r in range(2)]
    assert (whole["feats"] == 0).any()  # SpecAugment masked something
    for r, part in enumerate(parts):
        assert torch.equal(part["feats"], whole["feats"][r::2])
        assert part["utts"] == whole["utts"][r::2]


def test_language_balanced_sampling_evens_out_languages(tmp_path, toy):
    corpus = _corpus(toy)
    # Drop most of language 0: by frames it is then rarely drawn, balanced it is a third.
    pool = np.array(
        [i for i, u in enumerate(corpus.ids) if not u.startswith("l0") or u < "l0_u002"]
    )
    counts = {}
    for balanced in (False, True):
        cfg = _cfg(language_balanced=balanced, batch_size=64)["train"]
        utts = np.concatenate([plan_epoch(corpus, pool, cfg, 0, e).utts.ravel() for e in range(20)])
        counts[balanced] = np.bincount(corpus.langs[utts], minlength=3) / utts.size
    assert counts[False][0] < 0.2 and abs(counts[True][0] - 1 / 3) < 0.05


def test_short_utterances_are_padded_or_skipped(toy):
    corpus = load_corpus(toy.fbank_dir, toy.ali_dir, cmn="utterance", min_utt_frames=300)
    assert corpus.skipped["short"] and not set(corpus.skipped["short"]) & set(corpus.ids)
    assert all(n >= 300 for n in corpus.lengths)
    shortest = int(np.argmin(corpus.lengths))
    length = int(corpus.lengths[shortest]) + 25
    batch = gather(corpus, np.array([shortest]), np.array([0]), length, "utterance")
    assert batch["mask"][0].sum() == length - 25 and not batch["mask"][0, -25:].any()
    assert (batch["phones"][0, -25:] == -1).all() and (batch["feats"][0, -25:] == 0).all()


def test_validation_split_keeps_speed_perturbed_copies_out(tmp_path):
    make_toy_corpus(tmp_path / "a", utts_per_lang=6)
    corpus = load_corpus(tmp_path / "a" / "fbank", None, cmn="none", min_utt_frames=10)
    corpus.ids = [
        u if i % 2 == 0 else corpus.ids[i - 1] + "_sp1.1" for i, u in enumerate(corpus.ids)
    ]
    train, valid = split_validation(corpus, 0.2, seed=0)
    held = {corpus.ids[i] for i in valid}
    assert held and not any(u.endswith("_sp1.1") for u in held)
    assert not {corpus.ids[i].removesuffix("_sp1.1") for i in train} & held


def test_label_length_mismatch_names_the_utterance(tmp_path, toy):
    fbank, ali = _copy_corpus(toy, tmp_path)
    labels = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(ali / "ali.scp")).items()}
    labels["l1_u002"] = labels["l1_u002"][:-1]  # within the rounding tolerance: fixed
    kaldiio.save_ark(str(ali / "ali.ark"), labels, scp=str(ali / "ali.scp"))
    load_corpus(fbank, ali, cmn="utterance", min_utt_frames=40)
    labels["l1_u002"] = labels["l1_u002"][:-20]
    kaldiio.save_ark(str(ali / "ali.ark"), labels, scp=str(ali / "ali.scp"))
    with pytest.raises(ApmError, match="l1_u002.*label frames"):
        load_corpus(fbank, ali, cmn="utterance", min_utt_frames=40)


def test_unaligned_cut_is_an_error_or_skipped_by_flag(tmp_path, toy):
    fbank, ali = _copy_corpus(toy, tmp_path)
    labels = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(ali / "ali.scp")).items()}
    del labels["l2_u005"]
    kaldiio.save_ark(str(ali / "ali.ark"), labels, scp=str(ali / "ali.scp"))
    with pytest.raises(ApmError, match="l2_u005.*--skip-unaligned true"):
        load_corpus(fbank, ali, cmn="utterance", min_utt_frames=40)
    corpus = load_corpus(fbank, ali, cmn="utterance", min_utt_frames=40, skip_unaligned=True)
    assert corpus.skipped["unaligned"] == ["l2_u005"] and "l2_u005" not in corpus.ids


def _trainer(toy, exp_dir, **train):
    cfg = _cfg(**train)
    corpus = _corpus(toy)
    pool, valid = split_validation(corpus, cfg["train"]["valid_fraction"], cfg["seed"])
    return Trainer(cfg, corpus, pool, valid, exp_dir, init_distributed("cpu", 1))


def test_a_few_steps_lower_the_loss(tmp_path, toy):
    trainer = _trainer(toy, tmp_path, lr=3e-3, warmup_epochs=0)
    probe = next(iter(trainer._batches(99)))

    def probe_loss():
        with torch.no_grad():
            return trainer._forward(probe, trainer.net)[1].loss.item()

    before = probe_loss()
    batches = [b for e in range(3) for b in trainer._batches(e)]
    for i, batch in enumerate(batches):
        trainer.train_step(batch, i)
    assert len(batches) >= 9 and probe_loss() < 0.8 * before


def test_nan_loss_stops_and_saves_the_batch(tmp_path, toy):
    trainer = _trainer(toy, tmp_path)
    batch = next(iter(trainer._batches(0)))
    batch["feats"][0, 5, 3] = float("nan")
    with pytest.raises(ApmError, match="non-finite loss.*nan_batch.txt"):
        trainer.train_step(batch, 0)
    assert (tmp_path / "nan_batch.txt").read_text().split() == batch["utts"]


def test_nan_features_are_rejected_at_load(tmp_path):
    own = make_toy_corpus(tmp_path, utts_per_lang=2)
    fbank, ali = own.fbank_dir, own.ali_dir
    path = next((fbank / "storage").rglob("l0_u001*"))
    feats = np.load(path)
    feats[3, 2] = np.nan
    np.save(path, feats)
    with pytest.raises(ApmError, match="l0_u001: features contain NaN"):
        load_corpus(fbank, ali, cmn="utterance", min_utt_frames=40)


def test_resumed_run_equals_uninterrupted_run(tmp_path, toy):
    job = TrainJob(_cfg(epochs=3, average_last=2), toy.fbank_dir, tmp_path / "exp", toy.ali_dir)
    final = checkpoint.load(run_training(job))
    exp = tmp_path / "exp"
    assert sorted(checkpoint.list_checkpoints(exp)) == [1, 2, 3] and final["averaged_epochs"] == [
        2,
        3,
    ]
    for name in ("config.yaml", "languages.txt", "phones.txt", "train_curves.png"):
        assert (exp / name).is_file(), name
    assert any((exp / "tensorboard").iterdir())
    assert (exp / "languages.txt").read_text().split() == toy.languages
    assert yaml.safe_load((exp / "config.yaml").read_text())["seed"] == 3
    history = [yaml.safe_load(line) for line in (exp / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert set(history[-1]["train"]["margin"]) == set(toy.languages) and "valid" in history[-1]
    # Kill after epoch 1: the epoch 2-3 checkpoints and final.pt are lost.
    for name in ("checkpoints/epoch_2.pt", "checkpoints/epoch_3.pt", "final.pt"):
        (exp / name).unlink()
    resumed = checkpoint.load(run_training(job))
    for part in ("model", "crit"):
        for key, value in final[part].items():
            assert torch.equal(value, resumed[part][key]), key
    assert (exp / "train_log.jsonl").read_text().count("\n") == 3


def test_rerun_on_changed_data_retrains_instead_of_resuming(tmp_path, caplog):
    """Stage 4 rerun after stages 2-3 made other data: old checkpoints must not be reused."""
    exp = tmp_path / "exp"
    first = make_toy_corpus(tmp_path / "data", num_langs=3, utts_per_lang=8, seed=1)
    job = TrainJob(_cfg(epochs=1), first.fbank_dir, exp, first.ali_dir)
    before = checkpoint.load(run_training(job))
    again = TrainJob(_cfg(epochs=1), first.fbank_dir, exp, first.ali_dir)
    assert torch.equal(
        checkpoint.load(run_training(again))["model"][MODEL_KEY], before["model"][MODEL_KEY]
    )
    assert "starts over" not in caplog.text
    second = make_toy_corpus(tmp_path / "data", num_langs=3, utts_per_lang=8, seed=2)
    changed = TrainJob(_cfg(epochs=1), second.fbank_dir, exp, second.ali_dir)
    after = checkpoint.load(run_training(changed))
    assert "training starts over" in caplog.text
    assert not torch.equal(after["model"][MODEL_KEY], before["model"][MODEL_KEY])


def test_resume_refuses_another_config(tmp_path, toy):
    exp = tmp_path / "exp"
    run_training(TrainJob(_cfg(epochs=1), toy.fbank_dir, exp, toy.ali_dir))
    other = TrainJob(_cfg(epochs=1, lr=0.5), toy.fbank_dir, exp, toy.ali_dir)
    with pytest.raises(ApmError, match="another configuration"):
        run_training(other)
    other.resume = False  # starts over
    run_training(other)
    assert yaml.safe_load((exp / "config.yaml").read_text())["train"]["lr"] == 0.5


@pytest.mark.parametrize(
    "system", ["apm_am", "apm_aam", "am", "aam", "softmax", "single_task_softmax"]
)
def test_recipe_systems_resolve_and_build(system, repo_root):
    cfg = load_system_config(repo_root / "egs/olr/conf" / f"{system}.yaml", seed=1)
    model = build_model(cfg["model"], 40, 30)
    crit = build_loss(cfg["loss"], model.embed_dim, 10)
    feats, mask = torch.randn(2, 50, 40), torch.ones(2, 50, dtype=torch.bool)
    phones = torch.randint(0, 30, (2, 50)) if cfg["model"]["phone_branch"] else None
    res = crit(model(feats, mask), torch.tensor([0, 3]), phones, mask)
    assert torch.isfinite(res.loss)
    assert (res.phone_loss is not None) == cfg["model"]["phone_branch"]


def test_chunk_cmn_zeroes_each_chunk_mean_over_valid_frames(toy):
    corpus = load_corpus(toy.fbank_dir, toy.ali_dir, cmn="chunk", min_utt_frames=40)
    utts = np.arange(4)
    batch = gather(corpus, utts, np.zeros(4, dtype=np.int64), 500, "chunk")
    mask = batch["mask"]
    assert not mask.all()  # the toy utterances are shorter than 500 frames: padded
    mean = (batch["feats"] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert mean.abs().max() < 1e-4 and (batch["feats"][~mask] == 0).all()


def test_dataloader_workers_give_the_same_batches(tmp_path, toy):
    trainer = _trainer(toy, tmp_path, num_workers=2, specaugment={})
    with_workers = list(trainer._batches(0))
    trainer.tcfg["num_workers"] = 0
    for a, b in zip(with_workers, trainer._batches(0), strict=True):
        assert a["utts"] == b["utts"] and torch.equal(a["feats"], b["feats"])


def test_sliding_cmn_normalises_before_vad_selection():
    from apm.features.cmn import sliding_cmn
    from apm.features.readers import select_and_normalize

    feats = np.random.default_rng(0).normal(3.0, 1.0, (50, 4)).astype(np.float32)
    keep = np.arange(50) % 3 != 0
    out = select_and_normalize(feats, keep, "sliding")
    assert np.allclose(out, sliding_cmn(feats)[keep])
    utt = select_and_normalize(feats, keep, "utterance")
    assert np.allclose(utt.mean(axis=0), 0.0, atol=1e-5)
    assert np.array_equal(select_and_normalize(feats, keep, "chunk"), feats[keep])


def test_config_checks_extraction_floor():
    with pytest.raises(ApmError, match="min_voiced_frames"):
        resolve_config({**toy_config(), "extract": {"min_voiced_frames": 0}}, "x.yaml")


def test_compile_only_on_cuda(caplog):
    """train.compile (egs/fleurs conf/gpu) compiles on CUDA only: on a CPU it is skipped, and
    the log says so; not asked for, nothing is compiled or logged."""
    with caplog.at_level("INFO", logger="apm.train.trainer"):
        assert use_compile(True, torch.device("cuda", 0))
        assert not caplog.records
        assert not use_compile(False, torch.device("cpu"))
        assert not use_compile(False, torch.device("cuda"))
        assert not caplog.records
        assert not use_compile(True, torch.device("cpu"))
    assert "torch.compile skipped" in caplog.text and "cpu" in caplog.text
