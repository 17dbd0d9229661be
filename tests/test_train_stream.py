"""Streamed training data (apm.train.stream): bounded reading, reader split, determinism, the
same prepared chunks as the memory path, language balance, validation, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from apm.nnet import checkpoint
from apm.train import stream
from apm.train.batches import batches_per_epoch, plan_epoch, validation_batches
from apm.train.config import resolve_config
from apm.train.data import load_corpus, split_validation
from apm.train.job import TrainJob, run_training
from apm.train.stream import StreamBatches, load_stream_corpus, stream_validation_batches
from apm.train.toy import make_toy_corpus, toy_config
from apm.utils.errors import ApmError


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_corpus(tmp_path_factory.mktemp("toy"), num_langs=3, utts_per_lang=8)


def _cfg(**train):
    return resolve_config(toy_config(data="stream", **train), "toy", seed=3)


def _both(toy, **kw):
    memory = load_corpus(toy.fbank_dir, toy.ali_dir, cmn="utterance", min_utt_frames=40)
    streamed = load_stream_corpus(toy.fbank_dir, toy.ali_dir, min_utt_frames=40, **kw)
    return memory, streamed


def _batches(data: StreamBatches, worker: tuple[int, int] = (0, 1)) -> list[dict]:
    data.worker = lambda: worker
    return list(data)


def test_index_matches_the_memory_corpus_and_its_validation_split(toy):
    memory, streamed = _both(toy)
    assert streamed.ids == memory.ids and streamed.languages == memory.languages
    assert np.array_equal(streamed.lengths, memory.lengths)
    assert np.array_equal(streamed.langs, memory.langs)
    assert streamed.feat_dim == memory.feat_dim and streamed.num_phones == memory.num_phones
    split_m, split_s = split_validation(memory, 0.2, 3), split_validation(streamed, 0.2, 3)
    for a, b in zip(split_m, split_s, strict=True):
        assert np.array_equal(a, b)
    train, valid = split_s
    assert len(valid) and not set(train) & set(valid)


def test_chunks_are_the_memory_paths_prepared_frames(toy):
    memory, streamed = _both(toy)
    cfg = _cfg()["train"]
    pool = np.arange(len(memory.ids))
    batches = _batches(StreamBatches(streamed, pool, cfg, seed=3, epoch=0))
    num = batches_per_epoch(memory, pool, cfg)  # as many batches as the memory path
    assert len(batches) == num
    lengths = plan_epoch(memory, pool, cfg, 3, 0).lengths
    for batch, length in zip(batches, lengths, strict=True):
        assert batch["feats"].shape == (16, length, memory.feat_dim)
        for k, utt in enumerate(batch["utts"]):
            u = memory.ids.index(utt)
            frames = memory.feats[memory.offsets[u] : memory.offsets[u + 1]]
            labels = memory.phones[memory.offsets[u] : memory.offsets[u + 1]]
            n = int(batch["mask"][k].sum())
            chunk = batch["feats"][k, :n].numpy()
            starts = [
                s for s in range(len(frames) - n + 1) if np.array_equal(frames[s : s + n], chunk)
            ]
            assert starts, utt
            assert np.array_equal(batch["phones"][k, :n].numpy(), labels[starts[0] : starts[0] + n])
            assert (batch["phones"][k, n:] == -1).all() and (batch["feats"][k, n:] == 0).all()
            assert int(batch["langs"][k]) == memory.langs[u]
        assert batch["padded"] == (not bool(batch["mask"].all()))


def test_epochs_are_deterministic_and_differ(toy):
    _, streamed = _both(toy)
    cfg = _cfg(specaugment={})["train"]
    pool = np.arange(len(streamed.ids))
    first = _batches(StreamBatches(streamed, pool, cfg, seed=3, epoch=1))
    again = _batches(StreamBatches(streamed, pool, cfg, seed=3, epoch=1))
    other = _batches(StreamBatches(streamed, pool, cfg, seed=3, epoch=2))
    for a, b in zip(first, again, strict=True):
        assert a["utts"] == b["utts"] and torch.equal(a["feats"], b["feats"])
    assert [a["utts"] for a in first] != [b["utts"] for b in other]


def test_readers_split_the_cuts_disjoint_and_covering(toy):
    _, streamed = _both(toy)
    cfg = _cfg(batch_size=8)["train"]
    pool = np.arange(1, len(streamed.ids))  # any pool, not only all cuts
    seen = []
    for rank in range(2):
        for worker in range(2):
            data = StreamBatches(streamed, pool, cfg, seed=3, epoch=0, rank=rank, world=2)
            data.worker = lambda w=worker: (w, 2)
            shard = set(pool[data.shard()].tolist())
            seen.append(shard)
            batches = list(data)
            assert len(batches) == len(range(worker, data.num_batches, 2))
            used = {streamed.ids.index(u) for b in batches for u in b["utts"]}
            assert used <= shard and all(len(b["utts"]) == 4 for b in batches)
    assert sum(len(s) for s in seen) == len(pool) and set().union(*seen) == set(pool.tolist())


def test_dataloader_workers_give_the_reader_split_in_order(toy):
    _, streamed = _both(toy)
    cfg = _cfg(batch_size=8)["train"]
    pool = np.arange(len(streamed.ids))
    data = StreamBatches(streamed, pool, cfg, seed=3, epoch=0)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    got = list(loader)
    by_worker = [_batches(StreamBatches(streamed, pool, cfg, 3, 0), (w, 2)) for w in range(2)]
    expected = [by_worker[i % 2][i // 2] for i in range(data.num_batches)]
    assert len(got) == data.num_batches
    for a, b in zip(got, expected, strict=True):
        assert a["utts"] == b["utts"] and torch.equal(a["feats"], b["feats"])


def test_reading_stays_within_buffer_and_pool(toy, monkeypatch):
    _, streamed = _both(toy)
    cfg = _cfg(batch_size=4, stream_buffer=3, stream_pool=5)["train"]
    parsed = []
    original = stream.read_lines

    def counting(corpus, rows):
        for item in original(corpus, rows):
            parsed.append(item[0])
            yield item

    monkeypatch.setattr(stream, "read_lines", counting)
    data = StreamBatches(streamed, np.arange(len(streamed.ids)), cfg, seed=3, epoch=0)
    data.worker = lambda: (0, 1)
    batches = iter(data)
    next(batches)
    # The pool filled (5 prepared utterances), each drawn from a full buffer of 3 cuts: 2 more
    # cuts parsed (metadata only) and waiting in the buffer.
    assert len(parsed) == 5 + 2
    next(batches)
    # Only what the first batch spent (at most 4 utterances) was replaced.
    assert len(parsed) <= 5 + 2 + 4


def _language_shares(batches: list[dict], num_langs: int) -> np.ndarray:
    langs = torch.cat([b["langs"] for b in batches]).numpy()
    return np.bincount(langs, minlength=num_langs) / len(langs)


@pytest.mark.parametrize("balanced", [False, True])
def test_language_shares_follow_the_memory_path(tmp_path, balanced):
    toy = make_toy_corpus(tmp_path, num_langs=2, utts_per_lang=30, frames=(150, 250))
    memory, streamed = _both(toy)
    # Language l0 keeps all 30 utterances, l1 only 6: 5 times less speech.
    pool = np.flatnonzero((memory.langs == 0) | (np.arange(len(memory.ids)) % 5 == 0))
    cfg = _cfg(batch_size=8, language_balanced=balanced, stream_pool=12)["train"]
    shares = []
    for epoch in range(4):
        shares.append(_language_shares(_batches(StreamBatches(streamed, pool, cfg, 3, epoch)), 2))
    frames = np.bincount(memory.langs[pool], weights=memory.lengths[pool])
    expected = np.full(2, 0.5) if balanced else frames / frames.sum()
    assert np.allclose(np.mean(shares, axis=0), expected, atol=0.06), (shares, expected)


def test_validation_batches_equal_the_memory_path(toy):
    memory, streamed = _both(toy)
    cfg = _cfg(batch_size=4)["train"]
    pool = np.arange(0, len(memory.ids), 2)

    def by_utt(batches):
        out = {}
        for b in batches:
            for k, utt in enumerate(b["utts"]):
                n = int(b["mask"][k].sum())
                out[utt] = (b["feats"][k, :n], b["phones"][k, :n], int(b["langs"][k]))
        return out

    got = by_utt(stream_validation_batches(streamed, pool, cfg))
    ref = by_utt(validation_batches(memory, pool, cfg))
    assert got.keys() == ref.keys() and len(got) == len(pool)
    for utt, (feats, phones, lang) in ref.items():
        assert torch.equal(got[utt][0], feats) and torch.equal(got[utt][1], phones), utt
        assert got[utt][2] == lang


def test_feature_callable_is_used_and_checked(toy):
    _, plain = _both(toy)
    cfg = _cfg()["train"]
    pool = np.arange(len(plain.ids))

    def louder(cut, rng):
        return stream.stored_features(cut, rng) * 2.0

    _, loud = _both(toy, features=louder)
    a = _batches(StreamBatches(plain, pool, cfg, 3, 0))[0]
    b = _batches(StreamBatches(loud, pool, cfg, 3, 0))[0]
    assert a["utts"] == b["utts"] and torch.allclose(2 * a["feats"], b["feats"], atol=1e-4)

    def wrong_dim(cut, rng):
        return stream.stored_features(cut, rng)[:, :3]

    _, bad = _both(toy, features=wrong_dim)
    with pytest.raises(ApmError, match=r"cut l\d_u\d+: features of shape"):
        _batches(StreamBatches(bad, pool, cfg, 3, 0))


def test_too_many_readers_for_the_cuts_is_an_error(toy):
    _, streamed = _both(toy)
    data = StreamBatches(streamed, np.arange(3), _cfg()["train"], 3, 0, rank=0, world=1)
    data.worker = lambda: (3, 4)
    with pytest.raises(ApmError, match="lower train.num_workers"):
        list(data)


def test_streamed_run_learns_and_resumes_exactly(tmp_path, toy):
    cfg = _cfg(epochs=3, average_last=2, num_workers=2)
    job = TrainJob(cfg, toy.fbank_dir, tmp_path / "exp", toy.ali_dir)
    final = checkpoint.load(run_training(job))
    exp = tmp_path / "exp"
    history = [yaml.safe_load(line) for line in (exp / "train_log.jsonl").read_text().splitlines()]
    assert history[-1]["train"]["loss"] < history[0]["train"]["loss"] and "valid" in history[-1]
    assert final["bn_recalibration_batches"] > 0
    for name in ("checkpoints/epoch_2.pt", "checkpoints/epoch_3.pt", "final.pt"):
        (exp / name).unlink()
    resumed = checkpoint.load(run_training(job))
    for part in ("model", "crit"):
        for key, value in final[part].items():
            assert torch.equal(value, resumed[part][key]), key
    # Streamed batches depend on the worker count: resuming with another one is refused.
    other = TrainJob(_cfg(epochs=3, average_last=2, num_workers=1), toy.fbank_dir, exp, toy.ali_dir)
    (exp / "final.pt").unlink()
    with pytest.raises(ApmError, match="another configuration"):
        run_training(other)


def test_config_checks_stream_and_gpu_keys():
    cfg = resolve_config(toy_config(amp=True), "toy")["train"]
    assert cfg["amp"] == "bf16" and cfg["data"] == "memory" and cfg["compile"] is False
    assert resolve_config(toy_config(amp=False), "toy")["train"]["amp"] == "none"
    for bad, fragment in (
        ({"data": "disk"}, "train.data"),
        ({"amp": "fp8"}, "train.amp"),
        ({"compile": "yes"}, "compile"),
        ({"stream_pool": 0}, "stream_pool"),
    ):
        with pytest.raises(ApmError, match=fragment):
            resolve_config(toy_config(**bad), "toy")
