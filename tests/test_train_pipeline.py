"""The one training-data pipeline (apm.train.data, apm.train.batches, apm.train.cuts): memory
and stream give the same batches, labels as lhotse custom fields, Shar and Kaldi interop,
exact mid-epoch resume with any num_workers, retired config keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apm.bin.export_shar import build_parser
from apm.bin.export_shar import run as run_export
from apm.features.readers import read_alignment_scp, read_scp
from apm.nnet import checkpoint
from apm.train.batches import ChunkBatches, plan_epoch, validation_batches
from apm.train.config import resolve_config
from apm.train.cuts import export_labels, export_shar, label_field, load_label, read_shar
from apm.train.data import labelled_cuts, load_corpus, split_validation
from apm.train.job import TrainJob, input_signature, run_training
from apm.train.toy import make_toy_corpus, toy_config
from apm.train.trainer import Trainer
from apm.utils.errors import ApmError


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_corpus(tmp_path_factory.mktemp("toy"), num_langs=3, utts_per_lang=8)


def _cfg(**train):
    return resolve_config(toy_config(**train), "toy", seed=3)


def _load(source, ali, cache=True, cmn="utterance"):
    return load_corpus(source, ali, cmn=cmn, min_utt_frames=40, cache=cache)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a
    )


@pytest.mark.parametrize("cmn", ["utterance", "sliding", "chunk"])
def test_streamed_batches_are_the_memory_batches(toy, cmn):
    memory = _load(toy.fbank_dir, toy.ali_dir, cmn=cmn)
    streamed = _load(toy.fbank_dir, toy.ali_dir, False, cmn)
    assert streamed.ids == memory.ids and not streamed.cached and memory.cached
    assert np.array_equal(streamed.lengths, memory.lengths)
    split = split_validation(memory, 0.2, 3)
    for a, b in zip(split, split_validation(streamed, 0.2, 3), strict=True):
        assert np.array_equal(a, b)
    train, valid = split
    cfg = _cfg(batch_size=6, specaugment={}, cmn=cmn)["train"]
    plan = plan_epoch(memory, train, cfg, 3, 1)
    for rank, world in ((0, 1), (1, 2)):
        m = ChunkBatches(memory, plan, cfg, 3, 1, rank, world)
        s = ChunkBatches(streamed, plan, cfg, 3, 1, rank, world)
        assert len(m) == len(s) == len(plan)
        for i in range(len(m)):
            assert _equal(m[i], s[i]), (rank, i)
            assert len(s[i]["utts"]) == 6 // world  # equal rows on every rank
    pairs = zip(
        validation_batches(memory, valid, cfg),
        validation_batches(streamed, valid, cfg),
        strict=True,
    )
    assert all(_equal(a, b) for a, b in pairs)


def test_labels_travel_as_custom_fields_and_export_to_kaldi(toy, tmp_path):
    cuts = list(labelled_cuts(toy.fbank_dir, toy.ali_dir))
    vad, ali = (
        read_scp(toy.fbank_dir / "vad.scp", "vad"),
        read_alignment_scp(toy.ali_dir / "ali.scp"),
    )
    for cut in cuts[:3]:
        assert np.array_equal(load_label(cut, "vad"), np.asarray(vad[cut.id]))
        assert np.array_equal(cut.load_custom("ali"), ali[cut.id])
    assert export_labels(cuts, "ali", tmp_path / "ali.ark") == len(cuts)
    back = read_alignment_scp(tmp_path / "ali.scp")
    assert all(np.array_equal(back[c.id], ali[c.id]) for c in cuts)
    # A stored length off by more than the tolerance is an error naming the cut, though
    # load_custom alone would trim it silently.
    field = cuts[0].custom["ali"]
    long = label_field(
        field.array.storage_path, int(field.array.storage_key), 3 * cuts[0].num_frames
    )
    with pytest.raises(ApmError, match=f"utterance {cuts[0].id}: .* label frames"):
        load_label(cuts[0].with_custom("ali", long), "ali")


@pytest.mark.slow
def test_shar_shards_train_as_the_feature_store(toy, tmp_path):
    shards = export_shar(labelled_cuts(toy.fbank_dir, toy.ali_dir), tmp_path / "shar", 10)
    assert len(shards) == 3
    store, shar = _load(toy.fbank_dir, toy.ali_dir), _load(tmp_path / "shar", toy.ali_dir)
    assert shar.ids == store.ids and np.array_equal(shar.feats, store.feats)
    assert np.array_equal(shar.phones, store.phones)
    assert {c.id for c in read_shar(tmp_path / "shar")} == set(store.ids)
    with pytest.raises(ApmError, match="train.data: memory"):
        _load(tmp_path / "shar", toy.ali_dir, cache=False)
    # Stage 4 trains from the shards; their labels go back to Kaldi tables unchanged.
    job = TrainJob(_cfg(epochs=1, batch_size=8), tmp_path / "shar", tmp_path / "exp", toy.ali_dir)
    assert run_training(job).is_file()
    assert job_inputs(job) != job_inputs(
        TrainJob(job.config, toy.fbank_dir, job.exp_dir, toy.ali_dir)
    )
    export = build_parser().parse_args(["--to-kaldi", str(tmp_path / "shar"), str(tmp_path / "k")])
    run_export(export)
    back, ali = (
        read_alignment_scp(tmp_path / "k/ali.scp"),
        read_alignment_scp(toy.ali_dir / "ali.scp"),
    )
    assert sorted(back) == sorted(store.ids)
    assert all(np.array_equal(back[u], ali[u]) for u in store.ids)
    vad = read_scp(tmp_path / "k/vad.scp", "vad")
    assert np.array_equal(
        vad[store.ids[0]], read_scp(toy.fbank_dir / "vad.scp", "vad")[store.ids[0]]
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_from_a_step_gives_the_remaining_batches(toy, tmp_path, workers):
    cfg = _cfg(batch_size=4, num_workers=workers, specaugment={})
    corpus = _load(toy.fbank_dir, toy.ali_dir, cache=False)
    pool, valid = split_validation(corpus, 0.1, 3)
    trainer = Trainer(cfg, corpus, pool, valid, tmp_path, _env())
    data = trainer._dataset(0, cfg["train"], 0, 1)
    got = list(trainer._batches(0, start=3))
    assert len(got) == len(data) - 3 > 0
    assert all(_equal(a, data[i]) for i, a in enumerate(got, start=3))


def job_inputs(job: TrainJob) -> str:
    return input_signature(job.fbank_dir, job.ali_dir)


def _env():
    from apm.utils.dist import init_distributed

    return init_distributed("cpu", 1)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_run_killed_mid_epoch_resumes_tensor_identical(toy, tmp_path, monkeypatch, workers):
    cfg = _cfg(epochs=2, batch_size=4, average_last=1, checkpoint_interval=2,
               num_workers=workers, specaugment={}, data="stream")  # fmt: skip
    whole = checkpoint.load(run_training(TrainJob(cfg, toy.fbank_dir, tmp_path / "a", toy.ali_dir)))
    steps = json.loads((tmp_path / "a/train_log.jsonl").read_text().splitlines()[0])
    calls, original = [], Trainer.train_step

    def killed(self, batch, step):
        calls.append(step)
        if len(calls) == self.steps_per_epoch + 3:  # epoch 2, step 3: after the step-2 checkpoint
            raise KeyboardInterrupt
        return original(self, batch, step)

    job = TrainJob(cfg, toy.fbank_dir, tmp_path / "b", toy.ali_dir)
    monkeypatch.setattr(Trainer, "train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        run_training(job)
    monkeypatch.setattr(Trainer, "train_step", original)
    running = checkpoint.load(tmp_path / "b/checkpoints/running.pt")
    assert running["epoch"] == 1 and running["running_epoch"]["step"] == 2
    resumed = checkpoint.load(run_training(job))
    for part in ("model", "crit"):
        for key, value in whole[part].items():
            assert torch.equal(value, resumed[part][key]), key
    log = [json.loads(line) for line in (tmp_path / "b/train_log.jsonl").read_text().splitlines()]
    assert log[0]["train"] == steps["train"] and len(log) == 2
    assert (
        log[1]["train"]["loss"]
        == json.loads((tmp_path / "a/train_log.jsonl").read_text().splitlines()[1])["train"]["loss"]
    )


def test_retired_and_new_config_keys():
    for key in ("stream_buffer", "stream_pool"):
        with pytest.raises(ApmError, match=f"train.{key} .* no longer used"):
            resolve_config(toy_config(**{key: 10}), "toy")
    cfg = resolve_config(toy_config(amp=True), "toy")["train"]
    assert cfg["amp"] == "bf16" and cfg["data"] == "memory" and cfg["checkpoint_interval"] == 0
    for bad, fragment in (
        ({"data": "disk"}, "train.data"),
        ({"checkpoint_interval": -1}, "checkpoint_interval"),
    ):
        with pytest.raises(ApmError, match=fragment):
            resolve_config(toy_config(**bad), "toy")
