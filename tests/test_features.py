"""Stage 2: fbank frame convention, Kaldi compute-vad semantics, lilcom store, Kaldi copy, resuming."""

import dataclasses

import kaldiio
import numpy as np
import pytest
from lhotse.utils import compute_num_frames

from apm.data.import_dirs import import_data_dirs
from apm.data.manifests import make_manifests
from apm.data.toy import RATE, make_toy_corpus, toy_utterance
from apm.features import VadConfig, compute_vad, load_feats, load_vad, read_cuts, sliding_cmn
from apm.features.fbank import FeatureConfig, fbank_and_vad, load_feature_config, make_extractor
from apm.features.pipeline import make_fbank
from apm.utils import ApmError, num_frames, read_kv


def kaldi_compute_vad(log_energy, c: VadConfig):
    """Line-by-line transcription of Kaldi's ComputeVadEnergy (ivector/voice-activity-detection.cc)."""
    T = len(log_energy)
    threshold = c.energy_threshold + c.energy_mean_scale * sum(log_energy) / T
    out = []
    for t in range(T):
        num = den = 0
        for t2 in range(t - c.frames_context, t + c.frames_context + 1):
            if 0 <= t2 < T:
                den += 1
                num += log_energy[t2] > threshold
        out.append(1.0 if num >= den * c.proportion_threshold else 0.0)
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("T", [1, 3, 7, 250])
@pytest.mark.parametrize(
    "cfg",
    [VadConfig(), VadConfig(5.0, 0.5, 0, 0.6), VadConfig(4.0, 0.0, 3, 0.5)],
)
def test_vad_matches_kaldi_loop(T, cfg):
    rng = np.random.default_rng(T)
    log_energy = rng.normal(12, 4, T)
    np.testing.assert_array_equal(compute_vad(log_energy, cfg), kaldi_compute_vad(log_energy, cfg))


def kaldi_sliding_cmn(feats, cmn_window):
    """Transcription of Kaldi's SlidingWindowCmnInternal with center=true, norm_vars=false."""
    T = len(feats)
    out = np.empty_like(feats)
    for t in range(T):
        start = t - cmn_window // 2
        end = start + cmn_window
        if start < 0:
            end -= start
            start = 0
        if end > T:
            start = max(0, start - (end - T))
            end = T
        out[t] = feats[t] - feats[start:end].mean(axis=0)
    return out


@pytest.mark.parametrize("T, window", [(1, 300), (50, 300), (700, 300), (301, 300), (40, 7)])
def test_sliding_cmn_matches_kaldi(T, window):
    feats = np.random.default_rng(T).normal(5, 2, (T, 3))
    np.testing.assert_allclose(
        sliding_cmn(feats, window), kaldi_sliding_cmn(feats, window), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("n", [400, 401, 479, 480, 16000, 16079, 16080, 23456])
def test_fbank_frame_count_follows_the_convention(n):
    """N samples at 16 kHz give (N + 80) // 160 frames (snip-edges false), as lhotse counts."""
    cfg = FeatureConfig()
    x = np.random.default_rng(n).normal(0, 0.1, n).astype(np.float32)
    feats, vad = fbank_and_vad(x, RATE, make_extractor(cfg), cfg.vad, "u")
    assert feats.shape == (num_frames(n, RATE), 40) and vad.shape == (feats.shape[0],)
    assert feats.shape[0] == compute_num_frames(n / RATE, 0.01, RATE)
    assert feats.dtype == np.float32 and vad.dtype == np.float32


def test_vad_finds_the_bursts_and_features_are_deterministic():
    cfg = FeatureConfig()
    x = toy_utterance(np.random.default_rng(1), 150.0, 2.0)
    feats, vad = fbank_and_vad(x, RATE, make_extractor(cfg), cfg.vad, "u")
    again, _ = fbank_and_vad(x, RATE, make_extractor(cfg), cfg.vad, "u")
    assert np.array_equal(feats, again)
    assert vad[:25].sum() == 0 and vad[-25:].sum() == 0, "leading/trailing silence"
    assert 0.2 < vad.mean() < 0.9
    loud = np.abs(x).reshape(-1, 160)[: len(vad)].max(axis=1) > 0.1
    assert vad[loud].mean() > 0.95, "frames inside bursts are speech"


def test_config_rejects_unknown_and_fixed_keys(tmp_path):
    conf = tmp_path / "fbank.yaml"
    conf.write_text("fbank:\n  num_mel_bins: 23\nvad:\n  frames_context: 0\ncuts_per_job: 3\n")
    cfg = load_feature_config(conf)
    assert cfg.fbank["num_mel_bins"] == 23 and cfg.vad.frames_context == 0
    assert cfg.cuts_per_job == 3 and cfg.vad.energy_threshold == VadConfig().energy_threshold
    conf.write_text("fbank:\n  frame_shift: 0.02\n")
    with pytest.raises(ApmError, match="unknown key.*fbank.frame_shift"):
        load_feature_config(conf)


@pytest.fixture
def manifests(tmp_path):
    corpus = make_toy_corpus(tmp_path / "olr", {"train": 1}, seconds=(0.8, 1.0))
    import_data_dirs(corpus, tmp_path / "data", ["train"])
    make_manifests(tmp_path / "data", tmp_path / "manifests", ["train"])
    return tmp_path / "manifests"


def _outputs(set_dir):
    """Every output file of the set (temporary files excluded), by relative path."""
    return {
        str(p.relative_to(set_dir)): p.read_bytes()
        for p in sorted(set_dir.rglob("*"))
        if p.is_file() and not p.name.endswith((".tmp", ".tmp.lca"))
    }


def test_kaldi_copy_equals_the_lilcom_store(manifests, tmp_path):
    cfg = dataclasses.replace(FeatureConfig(), cuts_per_job=4)
    (summary,) = make_fbank(manifests, tmp_path / "fbank", ["train"], cfg, nj=2, kaldi_copy=True)
    d = tmp_path / "fbank/train"
    cuts, feats, vad = read_cuts(d).to_eager(), load_feats(d), load_vad(d)
    assert summary.cuts == len(cuts) == len(feats) == len(vad) == 6
    assert sorted(read_kv(d / "feats.scp")) == sorted(cuts.ids)
    assert sorted(p.name for p in (d / "storage").iterdir()) == ["feats.1.lca", "feats.2.lca"]
    for cut in cuts:
        assert cut.features.storage_type == "lilcom_chunky"
        f = cut.load_features()
        assert f.shape == (cut.num_frames, 40)
        np.testing.assert_array_equal(f, feats[cut.id])
        np.testing.assert_array_equal(kaldiio.load_mat(read_kv(d / "vad.scp")[cut.id]), vad[cut.id])
        assert set(np.unique(vad[cut.id])) <= {0.0, 1.0} and len(vad[cut.id]) == len(f)
    assert summary.frames == sum(c.num_frames for c in cuts)


def test_kaldi_copy_is_optional_and_added_later_without_recomputing(manifests, tmp_path):
    make_fbank(manifests, tmp_path / "fbank", ["train"], FeatureConfig())
    d = tmp_path / "fbank/train"
    assert not (d / "feats.scp").exists()
    assert sorted(p.name for p in d.rglob("*.ark")) == ["vad.1.ark"], "only the VAD table"
    with pytest.raises(ApmError, match="feats.scp: not found.*--kaldi-copy true"):
        load_feats(d)
    store = {p.name: p.stat().st_mtime_ns for p in (d / "storage").iterdir()}
    before = _outputs(d)
    assert (
        make_fbank(manifests, tmp_path / "fbank", ["train"], FeatureConfig(), kaldi_copy=True) == []
    )
    assert {p.name: p.stat().st_mtime_ns for p in (d / "storage").iterdir()} == store
    after = _outputs(d)
    assert {k: v for k, v in after.items() if k in before} == before, "the store is untouched"
    assert sorted(set(after) - set(before)) == ["feats.scp", "jobs/feats.1.ark", "jobs/feats.1.scp"]
    feats = load_feats(d)
    for cut in read_cuts(d).to_eager():
        np.testing.assert_array_equal(cut.load_features(), feats[cut.id])


def test_rerun_resumes_only_unfinished_jobs(manifests, tmp_path):
    cfg = dataclasses.replace(FeatureConfig(), cuts_per_job=2)
    make_fbank(manifests, tmp_path / "fbank", ["train"], cfg)
    d = tmp_path / "fbank/train"
    before = _outputs(d)
    assert make_fbank(manifests, tmp_path / "fbank", ["train"], cfg) == [], "finished: skipped"
    job1 = (d / "storage/feats.1.lca").stat().st_mtime_ns
    # As after a kill during job 2: its files half there, the set not finished.
    (d / ".done").unlink()
    (d / "jobs/cuts.2.jsonl.gz").unlink()
    (d / "storage/feats.2.lca").write_bytes(b"half")
    (d / "storage/.feats.3.tmp.lca").write_bytes(b"stale")
    (d / "jobs/.vad.3.ark.x.tmp").write_bytes(b"stale")
    make_fbank(manifests, tmp_path / "fbank", ["train"], cfg)
    assert (d / "storage/feats.1.lca").stat().st_mtime_ns == job1, "job 1 was not redone"
    assert not list(d.rglob(".*.tmp*")), "stale temporary files removed"
    assert _outputs(d) == before
    make_fbank(manifests, tmp_path / "fbank", ["train"], dataclasses.replace(cfg, cuts_per_job=3))
    assert len(list((d / "jobs").glob("cuts.*"))) == 2, "a new config recomputes the set"
    assert len(list((d / "storage").glob("*.lca"))) == 2, "and leaves no old archive"


def test_unloadable_audio_in_stage_2_stops_or_is_skipped(manifests, tmp_path):
    wav = next(iter(read_kv(tmp_path / "data/train/wav.scp").items()))
    (tmp_path / "olr" / "wav" / f"{wav[0]}.wav").unlink()
    with pytest.raises(ApmError, match=f"utterance {wav[0]} .*{wav[0]}.wav.*--skip-bad true"):
        make_fbank(manifests, tmp_path / "fbank", ["train"], FeatureConfig())
    assert not (tmp_path / "fbank/train/vad.scp").exists()
    assert not list((tmp_path / "fbank/train").rglob("*.lca")), "no archive left behind"
    (summary,) = make_fbank(
        manifests, tmp_path / "fbank", ["train"], FeatureConfig(), skip_bad=True
    )
    assert summary.skipped == 1 and summary.cuts == 5
    assert (tmp_path / "fbank/train/skipped").read_text().startswith(wav[0])


def test_a_set_whose_audio_all_fails_stops_even_when_skipping(manifests, tmp_path):
    for path in (tmp_path / "olr" / "wav").glob("*.wav"):
        path.unlink()
    with pytest.raises(ApmError, match="every utterance was skipped.*even with --skip-bad true"):
        make_fbank(manifests, tmp_path / "fbank", ["train"], FeatureConfig(), skip_bad=True)
    with pytest.raises(ApmError, match="--nj 0: .*at least 1"):
        make_fbank(manifests, tmp_path / "fbank", ["train"], FeatureConfig(), nj=0)


def test_paths_in_outputs_are_relative_to_the_recipe_directory(manifests, tmp_path, monkeypatch):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    monkeypatch.chdir(recipe)
    make_fbank(manifests, "data/fbank", ["train"], FeatureConfig(), kaldi_copy=True)
    scp = (recipe / "data/fbank/train/feats.scp").read_text()
    assert scp.split()[1].startswith("data/fbank/train/jobs/feats.1.ark:"), scp
    storage = read_cuts("data/fbank/train").to_eager()[0].features.storage_path
    assert storage == "data/fbank/train/storage/feats.1.lca"
    moved = tmp_path / "elsewhere" / "recipe"
    moved.parent.mkdir()
    recipe.rename(moved)
    monkeypatch.chdir(moved)
    cuts, feats = read_cuts("data/fbank/train").to_eager(), load_feats("data/fbank/train")
    for cut in cuts:
        np.testing.assert_array_equal(cut.load_features(), feats[cut.id])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ApmError, match="relative to the recipe directory"):
        load_feats(moved / "data/fbank/train")
