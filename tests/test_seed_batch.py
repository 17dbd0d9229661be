"""Seed-batched training (apm.train.seed_batch): each copy follows the single-model training
of its seed; the job writes what single runs write; resume; errors."""

from __future__ import annotations

import subprocess

import pytest
import torch
import yaml

from apm.bin import train_xvector
from apm.nnet import checkpoint
from apm.train.config import resolve_config
from apm.train.data import load_corpus, split_validation
from apm.train.job import TrainJob, run_seed_batch, run_training
from apm.train.seed_batch import SeedBatch, pad_batches
from apm.train.toy import make_toy_corpus, toy_config
from apm.train.trainer import Trainer
from apm.utils.dist import init_distributed
from apm.utils.errors import ApmError

# Seeds 1 and 6 hold out validation utterances of different lengths, so their epochs have 10
# and 9 steps (batch 8); chunks of 40-100 frames make the copies' chunk lengths differ, so the
# batched step pads.
SEEDS = (1, 6)
TRAIN = {"batch_size": 8, "chunk_min_frames": 40, "chunk_max_frames": 100}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_corpus(tmp_path_factory.mktemp("toy"), num_langs=3, utts_per_lang=8)


@pytest.fixture(scope="module")
def corpus(toy):
    return load_corpus(toy.fbank_dir, toy.ali_dir, cmn="utterance", min_utt_frames=40)


def _raw(kind="apm", **train):
    cfg = toy_config(**{**TRAIN, **train})
    cfg["loss"]["kind"] = kind
    return cfg


def _cfg(seed, kind="apm", **train):
    return resolve_config(_raw(kind, **train), "toy", seed=seed)


def _trainer(corpus, seed, exp_dir, **kw):
    cfg = _cfg(seed, **kw)
    pool, valid = split_validation(corpus, cfg["train"]["valid_fraction"], seed)
    return Trainer(cfg, corpus, pool, valid, exp_dir, init_distributed("cpu", 1))


def _flat(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.net.parameters()])


def _probe(trainer, batch):
    """Embeddings of a fixed batch in eval mode (through the BatchNorm running statistics)."""
    trainer.net.eval()
    with torch.no_grad():
        out = trainer.model(batch["feats"], batch["mask"])
    trainer.net.train()
    return out.embedding


@pytest.mark.parametrize("kind,optimizer", [("apm", "adam"), ("am", "sgd")])
def test_each_copy_follows_its_single_training(tmp_path, corpus, kind, optimizer):
    # One epoch: float rounding (padded vs unpadded sums) grows step by step through the
    # scale-30 margin softmax, so later epochs are close but not within 1e-3.
    opts = {"kind": kind, "optimizer": optimizer, "epochs": 1}
    single = [_trainer(corpus, s, tmp_path / f"single{s}", **opts) for s in SEEDS]
    batched = [_trainer(corpus, s, tmp_path / f"batched{s}", **opts) for s in SEEDS]
    assert len({t.steps_per_epoch for t in single}) == 2  # one copy stops early each epoch
    lengths = [[b["feats"].shape[1] for b in t._batches(0)] for t in single]
    assert any(a != b for a, b in zip(*lengths, strict=False))  # batched steps pad
    for t in single:
        t.run_epoch()
    SeedBatch(batched).run_epoch([None, None], [None, None])
    probe = next(iter(single[0]._batches(5)))
    for a, b in zip(single, batched, strict=True):
        assert b.epoch == 1 and b.step == 0 and len(b.history) == 1
        assert b.scheduler.last_epoch == a.scheduler.last_epoch == a.steps_per_epoch
        for ra, rb in zip(a.history, b.history, strict=True):
            assert rb["train"]["frames"] == ra["train"]["frames"]
            assert rb["train"]["loss"] == pytest.approx(ra["train"]["loss"], rel=1e-3)
            assert rb["valid"]["loss"] == pytest.approx(ra["valid"]["loss"], rel=1e-3)
        wa, wb = _flat(a), _flat(b)
        assert (wa - wb).norm() <= 1e-3 * wa.norm()
        ea, eb = _probe(a, probe), _probe(b, probe)
        assert (ea - eb).norm() <= 1e-2 * ea.norm()
    # The copies are not the same model: each has its own seed.
    assert (_flat(batched[0]) - _flat(batched[1])).norm() > 0.1 * _flat(batched[0]).norm()


def test_padding_marks_the_added_frames():
    short = {"feats": torch.ones(2, 3, 4), "mask": torch.ones(2, 3, dtype=torch.bool),
             "phones": torch.zeros(2, 3, dtype=torch.long), "langs": torch.tensor([0, 1])}  # fmt: skip
    long = {**short, "feats": torch.ones(2, 5, 4), "mask": torch.ones(2, 5, dtype=torch.bool),
            "phones": torch.zeros(2, 5, dtype=torch.long)}  # fmt: skip
    a, b = pad_batches([short, long])
    assert a["feats"].shape == b["feats"].shape == (2, 5, 4) and a["padded"] and b["padded"]
    assert a["mask"][:, 3:].any().item() is False and a["mask"][:, :3].all()
    assert (a["phones"][:, 3:] == -1).all() and (a["feats"][:, 3:] == 0).all()
    assert torch.equal(b["feats"], long["feats"]) and torch.equal(a["langs"], short["langs"])


def test_seed_batch_job_writes_what_single_runs_write_and_resumes(
    tmp_path, toy, repo_root, shell_env
):
    def job(seed, name):
        cfg = _cfg(seed, epochs=2, average_last=2)
        return TrainJob(cfg, toy.fbank_dir, tmp_path / name / f"seed{seed}", toy.ali_dir)

    conf = tmp_path / "toy.yaml"
    conf.write_text(yaml.safe_dump(_raw(epochs=2, average_last=2)))
    finals = [tmp_path / "batch" / f"seed{s}" / "final.pt" for s in SEEDS]
    cmd = [str(repo_root / "steps/train_xvector.sh"), "--config", str(conf),
           "--seeds", " ".join(map(str, SEEDS)), "--ali-dir", str(toy.ali_dir),
           str(toy.fbank_dir), *(str(f.parent) for f in finals)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=shell_env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (finals[0].parent / "log" / "train.log").read_text()
    assert all(f"epoch 2 (seed {s})" in log for s in SEEDS)
    for seed, final in zip(SEEDS, finals, strict=True):
        exp = final.parent
        assert sorted(checkpoint.list_checkpoints(exp)) == [1, 2]
        assert yaml.safe_load((exp / "config.yaml").read_text())["seed"] == seed
        assert (exp / "languages.txt").read_text().split() == toy.languages
        assert (exp / "train_log.jsonl").read_text().count("\n") == 2
        single = checkpoint.load(run_training(job(seed, "single")))
        batched = checkpoint.load(final)
        assert batched["averaged_epochs"] == single["averaged_epochs"] == [1, 2]
        weights = [k for k, v in single["model"].items() if v.is_floating_point()]
        a = torch.cat([single["model"][k].flatten() for k in weights])
        b = torch.cat([batched["model"][k].flatten() for k in weights])
        assert (a - b).norm() <= 1e-2 * a.norm()
    # Kill one copy after epoch 1: the rerun trains that copy's epoch 2 only.
    first = checkpoint.load(finals[0])
    (finals[1].parent / "checkpoints" / "epoch_2.pt").unlink()
    finals[1].unlink()
    run_seed_batch([job(s, "batch") for s in SEEDS])
    again = checkpoint.load(finals[0])
    for key, value in first["model"].items():
        assert torch.equal(again["model"][key], value), key
    assert finals[1].is_file()


def test_a_seed_batch_trains_one_system(tmp_path, corpus):
    trainers = [_trainer(corpus, 1, tmp_path / "a"), _trainer(corpus, 2, tmp_path / "b", lr=0.1)]
    with pytest.raises(ApmError, match="differs from .* in more than the seed"):
        SeedBatch(trainers)


def test_cli_wants_one_exp_dir_per_seed(tmp_path, toy, repo_root):
    conf = repo_root / "egs/olr/conf/am.yaml"
    args = train_xvector.build_parser().parse_args(
        ["--config", str(conf), "--seeds", "1 2", str(toy.fbank_dir), str(tmp_path / "one")]
    )
    with pytest.raises(ApmError, match="2 seed.*1 experiment directories"):
        train_xvector.run(args)
    args = train_xvector.build_parser().parse_args(
        ["--config", str(conf), "--seed", "1", "--seeds", "2", str(toy.fbank_dir), "x"]
    )
    with pytest.raises(ApmError, match="not both"):
        train_xvector.run(args)
