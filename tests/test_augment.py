"""On-the-fly noise/reverb augmentation (apm.features.augment) and steps/prepare_augment.sh,
on a tiny MUSAN and RIRS_NOISES that the test writes in the layouts lhotse's recipes parse."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet

from apm.data.import_dirs import import_data_dirs
from apm.data.manifests import make_manifests
from apm.data.toy import make_toy_corpus
from apm.features.augment import (
    KINDS,
    Augmenter,
    Plan,
    load_augment_config,
    prepare_augment_sets,
    resolve_augment,
    write_toy_sets,
)
from apm.features.fbank import load_feature_config
from apm.features.pipeline import make_fbank
from apm.features.readers import load_cut_features
from apm.utils import ApmError

ROOT = Path(__file__).resolve().parents[1]
FBANK_CONF = ROOT / "egs/olr/conf/fbank.yaml"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """Stage 0-2 on a toy training set (with speed-perturbed copies) + prepared noise sets."""
    tmp = tmp_path_factory.mktemp("augment")
    make_toy_corpus(tmp / "olr", {"train": 1}, seconds=(1.5, 2.5), seed=3)
    import_data_dirs(tmp / "olr", tmp / "data", ["train"])
    make_manifests(tmp / "data", tmp / "manifests", ["train"], nj=1, perturb_sets=["train"])
    features = load_feature_config(FBANK_CONF)
    make_fbank(tmp / "manifests", tmp / "fbank", ["train"], features, nj=1)
    musan, rirs = write_toy_sets(tmp / "corpora", seed=5)
    sets = tmp / "augment"
    subprocess.run(
        [str(ROOT / "steps/prepare_augment.sh"), "--musan", str(musan), "--rirs-noises",
         str(rirs), "--rir-parts", "sim_rir real_rir", str(sets)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    cuts = sorted(CutSet.from_file(tmp / "fbank/train/cuts.jsonl.gz"), key=lambda c: c.id)
    return {"tmp": tmp, "sets": sets, "features": features, "cuts": cuts, "rirs_root": rirs}


def section(sets: Path, **overrides) -> dict:
    raw = {
        "prob": 1.0,
        "reverb_prob": 0.0,
        "rirs": str(sets / "rirs.jsonl.gz"),
        **{kind: {"manifest": str(sets / f"{kind}.jsonl.gz")} for kind in KINDS},
    }
    raw.update(overrides)
    return raw


def augmenter(work: dict, seed: int = 7, **overrides) -> Augmenter:
    return Augmenter(resolve_augment(section(work["sets"], **overrides)), work["features"], seed)


def energy(x: np.ndarray) -> float:
    return float(np.mean(np.asarray(x, dtype=np.float64) ** 2))


def test_prepare_writes_every_set(work):
    for name, count in (("noise", 2), ("music", 2), ("babble", 4), ("rirs", 4)):
        recs = RecordingSet.from_file(work["sets"] / f"{name}.jsonl.gz")
        assert len(recs) == count, name
        assert all(Path(r.sources[0].source).is_file() for r in recs)
    rirs = RecordingSet.from_file(work["sets"] / "rirs.jsonl.gz")
    assert {"small-Room001-00001", "RVB2014_type1_rir_largeroom1_near_angla"} <= set(rirs.ids)


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_snr_matches_the_drawn_snr(work, kind):
    """Each source (a noise, a music piece, a babble speaker) has its drawn SNR against the
    whole clean cut; with one source (noise, music) so has the noise in the output (output -
    clean); babble sums 3-7 speakers."""
    others = {k: {"manifest": None} for k in KINDS if k != kind}
    aug = augmenter(work, reverb_prob=0.0, rirs=None, **others)
    lo, hi = aug.cfg.kinds[KINDS.index(kind)].snr
    speakers = set()
    for cut in work["cuts"]:
        plan = aug.plan(cut, epoch=0)
        assert plan.kind == kind
        clean = cut.load_audio()[0]
        out = aug.audio(cut, plan)
        assert len(out) == len(clean)
        noises = aug.noises(cut, plan, clean)
        np.testing.assert_allclose(np.sum(noises, axis=0), out - clean, atol=1e-5)
        for (_, _, snr), noise in zip(plan.sources, noises, strict=True):
            assert lo <= snr <= hi
            assert abs(10 * np.log10(energy(clean) / energy(noise)) - snr) < 0.5, cut.id
        speakers.add(len(plan.sources))
        if kind != "babble":
            measured = 10 * np.log10(energy(clean) / energy(out - clean))
            assert abs(measured - plan.sources[0][2]) < 0.5, cut.id
    assert (
        speakers <= set(range(3, 8)) and len(speakers) > 1 if kind == "babble" else speakers == {1}
    )


def test_short_noise_is_repeated(work):
    """A noise source shorter than the cut is repeated (the brown noise is 1.25 s)."""
    aug = augmenter(work, reverb_prob=0.0, music={"manifest": None}, babble={"manifest": None})
    cut = max(work["cuts"], key=lambda c: c.duration)
    brown = aug.sets["noise"]["noise-brown"]
    assert brown.duration < cut.duration
    plan = Plan("noise", sources=(("noise-brown", 0.5, 5.0),))
    clean = cut.load_audio()[0]
    (noise,) = aug.noises(cut, plan, clean)
    x = brown.load_audio()[0]
    tiled = np.concatenate([x[8000:], x, x])[: len(noise)]  # from 0.5 s, then from the start
    scale = np.dot(noise, tiled) / np.dot(tiled, tiled)
    np.testing.assert_allclose(noise, scale * tiled, atol=1e-6)  # one scale over the span
    assert abs(10 * np.log10(energy(clean) / energy(noise)) - 5.0) < 0.01


def test_frame_count_equals_the_stored_features(work):
    aug = augmenter(work, reverb_prob=0.5)
    kinds = set()
    for cut in work["cuts"]:
        feats = aug(cut, epoch=1)
        stored = load_cut_features(cut)
        assert feats.shape == stored.shape and feats.dtype == np.float32, cut.id
        assert not np.allclose(feats, stored)  # it was augmented (prob 1)
        kinds.add(aug.plan(cut, 1).kind)
    assert kinds == {"reverb", *KINDS}  # every effect was drawn
    assert any("_sp" in c.id for c in work["cuts"])  # speed-perturbed cuts are covered


def test_reverb_keeps_the_signal_in_place(work, tmp_path):
    """White noise reverberated by the augmenter: the cross-correlation with the clean signal
    peaks at lag 0 (the direct path), though every RIR starts with a delay."""
    rate = 16000
    clean = np.random.default_rng(0).normal(0, 0.1, rate).astype(np.float32)
    sf.write(tmp_path / "white.wav", clean, rate)
    cut = Recording.from_file(tmp_path / "white.wav").to_cut()
    aug = augmenter(work, reverb_prob=1.0)
    used = set()
    for epoch in range(8):
        plan = aug.plan(cut, epoch)
        used.add(plan.rir)
        h = aug.sets["rirs"][plan.rir].load_audio()[0]
        assert np.argmax(np.abs(h)) >= 40  # a delayed direct path that must be compensated
        out = aug.audio(cut, plan)
        assert len(out) == len(clean)
        lags = np.arange(-200, 201)
        xcorr = [np.dot(out[max(k, 0) : len(out) + min(k, 0)], clean[max(-k, 0) : len(clean) - max(k, 0)]) for k in lags]  # fmt: skip
        assert lags[int(np.argmax(xcorr))] == 0, plan.rir
        assert abs(10 * np.log10(energy(out) / energy(clean))) < 0.1  # power is kept
    assert len(used) >= 3


def test_deterministic_per_seed_and_epoch(work):
    cuts = work["cuts"]
    a, b = augmenter(work, seed=11, reverb_prob=0.3), augmenter(work, seed=11, reverb_prob=0.3)
    first = [a(c, epoch=2) for c in cuts]
    again = [b(c, epoch=2) for c in reversed(cuts)][::-1]  # another order, another instance
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.for_epoch(2)(cuts[0]), first[0])
    other_epoch = [a(c, epoch=3) for c in cuts]
    other_seed = [augmenter(work, seed=12, reverb_prob=0.3)(c, epoch=2) for c in cuts]
    for other in (other_epoch, other_seed):
        assert (
            sum(not np.array_equal(x, y) for x, y in zip(first, other, strict=True))
            >= len(cuts) // 2
        )


def test_prob_draws_per_cut(work):
    aug = augmenter(work, prob=0.5)
    drawn = [aug.plan(c, e) is not None for c in work["cuts"] for e in range(4)]
    assert 0.25 < np.mean(drawn) < 0.75
    clean = next(c for c in work["cuts"] if aug.plan(c, 0) is None)
    np.testing.assert_array_equal(aug(clean, 0), load_cut_features(clean))


def test_off_by_default(work):
    cfg = resolve_augment(None)
    assert not cfg.enabled and resolve_augment({}) == cfg
    for conf in sorted((ROOT / "egs/olr/conf").glob("*.yaml")):
        if conf.name not in ("fbank.yaml", "align.yaml", "backend.yaml", "claims.yaml"):
            assert not load_augment_config(conf).enabled, conf
    aug = Augmenter(cfg, work["features"], seed=0)  # needs no noise set
    for cut in work["cuts"][:3]:
        assert aug.plan(cut, 0) is None
        np.testing.assert_array_equal(aug(cut), load_cut_features(cut))
    recorded = cfg.to_dict()
    assert recorded["prob"] == 0.0 and recorded["babble"]["snr"] == [13, 20]
    assert recorded["babble"]["speakers"] == [3, 7] and recorded["noise"]["snr"] == [0, 15]
    assert resolve_augment(recorded) == cfg  # the recorded section reads back the same


@pytest.mark.parametrize(
    "raw, named",
    [
        ({"probability": 0.5}, ["augment", "probability", "reverb_prob", "babble"]),
        ({"prob": 1.5}, ["'augment.prob'", "<= 1"]),
        ({"prob": "often"}, ["'augment.prob'", "number >= 0"]),
        ({"noise": {"snr": [15, 0]}}, ["'augment.noise.snr'", "low must not exceed high"]),
        ({"music": {"snr": 10}}, ["'augment.music.snr'", "[low, high]"]),
        ({"babble": {"speakers": [0, 7]}}, ["'augment.babble.speakers'", ">= 1"]),
        ({"babble": {"speakers": [3, 7.5]}}, ["'augment.babble.speakers'", "integer"]),
        ({"noise": {"snr": [0, 15], "speakers": [3, 7]}}, ["augment.noise", "speakers", "weight"]),
        ({"noise": "musan"}, ["'augment.noise'", "manifest", "snr", "weight"]),
        ({"prob": 0.5, "rirs": None, "reverb_prob": 0.2}, ["'augment.rirs'", "reverb_prob: 0"]),
        ({"prob": 0.5, "reverb_prob": 0}, ["noise, music, babble", "augment.<kind>.manifest"]),
        ({"rirs": 3}, ["'augment.rirs'", "manifest path or null"]),
    ],
)
def test_config_errors_name_key_and_allowed_values(raw, named):
    with pytest.raises(ApmError) as e:
        resolve_augment(raw, "conf/x.yaml")
    assert "conf/x.yaml" in str(e.value)
    for text in named:
        assert text in str(e.value), (text, str(e.value))


def test_missing_or_empty_manifest(work, tmp_path):
    raw = section(work["sets"], reverb_prob=0.0, noise={"manifest": str(tmp_path / "no.jsonl.gz")})
    with pytest.raises(ApmError, match="no.jsonl.gz: augment.noise manifest not found"):
        Augmenter(resolve_augment(raw), work["features"], 0)


def test_feature_config_mismatch_is_an_error(work):
    from apm.features.fbank import FeatureConfig

    aug = Augmenter(
        resolve_augment(section(work["sets"])), FeatureConfig(fbank={"num_mel_bins": 30}), 0
    )
    with pytest.raises(ApmError, match="feature config"):
        aug(work["cuts"][0], 0)


def test_prepare_errors(work, tmp_path):
    with pytest.raises(ApmError, match="MUSAN root"):
        prepare_augment_sets(tmp_path / "out")
    with pytest.raises(ApmError, match="nowhere: MUSAN"):
        prepare_augment_sets(tmp_path / "out", musan=tmp_path / "nowhere")
    empty = tmp_path / "musan"
    for part in ("noise", "music", "speech"):
        (empty / part).mkdir(parents=True)
    with pytest.raises(ApmError, match=r"musan/noise: no \.wav files"):
        prepare_augment_sets(tmp_path / "out", musan=empty)
    with pytest.raises(ApmError, match="choose sim_rir and/or real_rir"):
        prepare_augment_sets(tmp_path / "out", rirs_noises=work["rirs_root"], rir_parts=("iso",))
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_prepare_bad_noise_files_stop_or_are_skipped(tmp_path):
    musan, _ = write_toy_sets(tmp_path / "corpora", seed=5)
    noise = sorted((musan / "noise").rglob("*.wav"))
    x = np.full(16000, 0.1, dtype=np.float32)
    x[100] = np.nan
    sf.write(noise[0], x, 16000, subtype="FLOAT")  # NaN samples
    noise[1].write_bytes(b"RIFF\x00\x00garbage" * 10)  # corrupt
    with pytest.raises(ApmError) as e:
        prepare_augment_sets(tmp_path / "out", musan=musan)
    msg = str(e.value)
    assert "2 bad utterance(s)" in msg and str(noise[0]) in msg and str(noise[1]) in msg
    assert "NaN or infinite" in msg and "cannot read audio" in msg and "--skip-bad true" in msg
    with pytest.raises(ApmError, match="no usable noise recordings left"):
        prepare_augment_sets(tmp_path / "out", musan=musan, skip_bad=True)
    keep = tmp_path / "corpora/musan/noise/free-sound/extra.wav"
    keep.parent.mkdir(parents=True, exist_ok=True)
    sf.write(keep, np.full(16000, 0.1, dtype=np.float32), 16000)
    written = prepare_augment_sets(tmp_path / "out", musan=musan, skip_bad=True)
    assert list(RecordingSet.from_file(written["noise"]).ids) == ["extra"]


def test_prepare_cli_help():
    out = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-m", "apm.bin.prepare_augment", "--help"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    assert "--musan" in out.stdout and "--rirs-noises" in out.stdout


def _augmented_system(work: dict, data: str) -> dict:
    from apm.train.config import resolve_config
    from apm.train.toy import toy_config

    raw = toy_config(epochs=1, data=data)
    raw["model"]["phone_branch"] = False
    raw["loss"] = {"kind": "am", "margin": 0.2, "scale": 30.0}
    raw["augment"] = section(work["sets"], prob=0.5, reverb_prob=0.5)
    return resolve_config(raw, "toy", seed=1)


@pytest.mark.parametrize("data", ["memory", "stream"])
def test_training_augments_chunks_on_every_path(work, tmp_path, monkeypatch, data):
    """An augment section trains on augmented chunks whichever way the set is held: the
    chunks drawn for augmentation take their audio from the Augmenter (with the set's
    recorded stage-2 feature config), and training completes."""
    from apm.train.job import TrainJob, run_training

    calls = []
    original = Augmenter.audio

    def counting(self, cut, plan):
        calls.append(cut.id)
        return original(self, cut, plan)

    monkeypatch.setattr(Augmenter, "audio", counting)
    cfg = _augmented_system(work, data)
    final = run_training(TrainJob(cfg, work["tmp"] / "fbank/train", tmp_path / "exp", None))
    assert final.is_file() and calls
    assert cfg["augment"]["prob"] == 0.5


def test_augmented_chunks_depend_on_batch_and_row_not_on_processes_or_workers(work):
    """Per chunk, the draw is keyed by (seed, epoch, batch, row of the global batch): a rank's
    rows of the global batch, batches built in DataLoader workers and a second build are all
    equal; about `prob` of the chunks differ from the clean batch."""
    import torch

    from apm.train.batches import ChunkBatches, plan_epoch
    from apm.train.data import load_corpus

    cfg = _augmented_system(work, "stream")
    tcfg = {**cfg["train"], "batch_size": 8}
    corpus = load_corpus(work["tmp"] / "fbank/train", None, cmn="utterance", min_utt_frames=20,
                         cache=False)  # fmt: skip
    pool = np.arange(len(corpus.ids))
    plan = plan_epoch(corpus, pool, tcfg, 1, 0)
    aug = Augmenter(resolve_augment(cfg["augment"]), work["features"], 1)
    data = ChunkBatches(corpus, plan, tcfg, 1, 0, augmenter=aug)
    clean = ChunkBatches(corpus, plan, tcfg, 1, 0)
    whole = [data[i] for i in range(2)]
    changed = 0
    for i, batch in enumerate(whole):
        for rank in range(2):
            part = ChunkBatches(corpus, plan, tcfg, 1, 0, rank, 2, aug)[i]
            assert torch.equal(part["feats"], batch["feats"][rank::2]), (i, rank)
        ref = clean[i]["feats"]
        changed += sum(not torch.equal(a, b) for a, b in zip(batch["feats"], ref, strict=True))
    assert 0 < changed < 16
    loader = torch.utils.data.DataLoader(data, batch_size=None, sampler=range(2), num_workers=2)
    for a, b in zip(loader, whole, strict=True):
        assert torch.equal(a["feats"], b["feats"])
    other_epoch = ChunkBatches(corpus, plan, tcfg, 1, 1, augmenter=aug)[0]
    assert not torch.equal(other_epoch["feats"], whole[0]["feats"])


def test_stage_2_records_its_feature_config(work, tmp_path):
    from apm.features.fbank import stored_feature_config

    assert stored_feature_config(work["tmp"] / "fbank/train") == work["features"]
    with pytest.raises(ApmError, match="rerun stage 2"):
        stored_feature_config(tmp_path)
