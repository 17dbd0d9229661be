"""Stage 1: lhotse manifests, audio checks, pipes, speed perturbation."""

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, RecordingSet, SupervisionSet

from apm.data.import_dirs import import_data_dirs
from apm.data.manifests import make_manifests
from apm.data.toy import make_toy_corpus
from apm.utils import ApmError, read_kv, write_kv

BAD_UTT = "train-spk0-zh-cn-000"


@pytest.fixture
def data(tmp_path):
    corpus = make_toy_corpus(tmp_path / "olr", {"train": 1, "test": 1}, seconds=(0.8, 1.0))
    import_data_dirs(corpus, tmp_path / "data", ["train", "test"])
    return tmp_path / "data"


def _set_wav(data, entry, utt=BAD_UTT):
    wav = read_kv(data / "train/wav.scp")
    wav[utt] = entry
    write_kv(data / "train/wav.scp", wav)


def test_manifests_carry_language_speaker_and_pipes_work(data):
    wav = read_kv(data / "train/wav.scp")
    _set_wav(data, f"cat {wav[BAD_UTT]} |")
    (summary,) = make_manifests(data, data / "manifests", ["train"], nj=2)
    out = data / "manifests/train"
    recs = RecordingSet.from_file(out / "recordings.jsonl.gz").to_eager()
    sups = SupervisionSet.from_file(out / "supervisions.jsonl.gz").to_eager()
    cuts = CutSet.from_file(out / "cuts.jsonl.gz").to_eager()
    assert summary.utterances == 6 and summary.languages == ["ja-jp", "ru-ru", "zh-cn"]
    assert summary.speakers == 2 and summary.skipped == 0
    assert recs[BAD_UTT].sources[0].type == "command"
    assert sorted(cuts.ids) == sorted(read_kv(data / "train/utt2lang"))
    utt2lang = read_kv(data / "train/utt2lang")
    assert all(s.language == utt2lang[s.id] for s in sups)
    cut = cuts[BAD_UTT]
    assert cut.supervisions[0].speaker == "train-spk0"
    assert np.array_equal(cut.load_audio(), recs[BAD_UTT].load_audio()), "pipe audio loads"
    assert cut.load_audio().shape[1] == sf.info(wav[BAD_UTT]).frames


def test_speed_perturbation_adds_suffixed_cuts(data):
    (summary,) = make_manifests(data, data / "manifests", ["train"], perturb_sets=["train"])
    cuts = CutSet.from_file(data / "manifests/train/cuts.jsonl.gz").to_eager()
    assert summary.perturbed == 12 and len(cuts) == 18
    slow, orig = cuts[f"{BAD_UTT}_sp0.9"], cuts[BAD_UTT]
    assert slow.supervisions[0].language == "zh-cn"
    assert abs(slow.duration - orig.duration / 0.9) < 1e-3
    assert f"{BAD_UTT}_sp1.1" in cuts.ids


def test_rerun_skips_a_finished_set(data, caplog):
    make_manifests(data, data / "manifests", ["train"])
    mtime = (data / "manifests/train/cuts.jsonl.gz").stat().st_mtime_ns
    assert make_manifests(data, data / "manifests", ["train"]) == []
    assert (data / "manifests/train/cuts.jsonl.gz").stat().st_mtime_ns == mtime


def _write_bad(path, kind):
    if kind == "corrupt":
        path.write_bytes(b"RIFF\x00\x00garbage" * 10)
    elif kind == "empty":
        sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    elif kind == "short":
        sf.write(path, np.zeros(200, dtype=np.float32), 16000)
    elif kind == "8k":
        sf.write(path, np.zeros(8000, dtype=np.float32), 8000)
    elif kind == "stereo":
        sf.write(path, np.zeros((16000, 2), dtype=np.float32), 16000)
    elif kind in ("nan", "inf", "nan-pipe"):
        x = np.full(16000, 0.1, dtype=np.float32)
        x[1234] = np.nan if kind != "inf" else np.inf
        sf.write(path, x, 16000, subtype="FLOAT")


@pytest.mark.parametrize(
    "kind, message",
    [
        ("corrupt", "cannot read audio"),
        ("empty", "shorter than one 25 ms frame"),
        ("short", "shorter than one 25 ms frame"),
        ("8k", "sampling rate is 8000 Hz"),
        ("stereo", "2 channels"),
        ("pipe", "failed with exit status"),
        ("nan", "1 NaN or infinite sample(s) (the first is sample 1234)"),
        ("inf", "NaN or infinite"),
        ("nan-pipe", "NaN or infinite"),
    ],
)
def test_bad_audio_stops_or_is_skipped(data, tmp_path, kind, message):
    bad = tmp_path / f"{kind}.wav"
    if kind == "pipe":
        entry = f"cat {tmp_path}/missing.wav |"
    elif kind == "nan-pipe":
        _write_bad(bad, kind)
        entry = f"cat {bad} |"
    else:
        _write_bad(bad, kind)
        entry = str(bad)
    _set_wav(data, entry)
    with pytest.raises(ApmError) as e:
        make_manifests(data, data / "manifests", ["train"], nj=2)
    msg = str(e.value)
    assert BAD_UTT in msg and message in msg and "--skip-bad true" in msg
    assert (entry.split()[1] if "pipe" in kind else str(bad)) in msg, "names the file"
    assert not (data / "manifests/train").exists(), "no partial output"
    (summary,) = make_manifests(data, data / "manifests", ["train"], nj=2, skip_bad=True)
    assert summary.skipped == 1 and summary.utterances == 5
    cuts = CutSet.from_file(data / "manifests/train/cuts.jsonl.gz").to_eager()
    assert BAD_UTT not in cuts.ids
    assert (data / "manifests/train/skipped").read_text().startswith(BAD_UTT)


def test_missing_language_is_caught_in_stage_1_too(data):
    utt2lang = read_kv(data / "train/utt2lang")
    del utt2lang[BAD_UTT]
    write_kv(data / "train/utt2lang", utt2lang)
    with pytest.raises(ApmError, match=f"{BAD_UTT}.*utt2lang.*has no language"):
        make_manifests(data, data / "manifests", ["train"])


def _segment_set(data, overshoot):
    """data/train as one segment per recording, ending `overshoot` s past the recording."""
    wav = read_kv(data / "train/wav.scp")
    seg = {f"{r}-s": f"{r} 0.1 {sf.info(p).duration + overshoot}" for r, p in wav.items()}
    write_kv(data / "train/segments", seg)
    write_kv(data / "train/utt2spk", {u: "spk" for u in seg})
    write_kv(data / "train/utt2lang", {u: "-".join(u.split("-")[2:4]) for u in seg})
    (data / "train/spk2utt").unlink(missing_ok=True)


def test_segments_a_little_past_the_end_are_truncated_and_counted(data, caplog):
    _segment_set(data, 0.3)
    with caplog.at_level("WARNING"):
        (summary,) = make_manifests(data, data / "manifests", ["train"])
    assert summary.utterances == 6 and summary.skipped == 0
    assert "6 segment(s) end up to 0.5 s past their recording and were cut" in caplog.text
    cuts = CutSet.from_file(data / "manifests/train/cuts.jsonl.gz").to_eager()
    rec = cuts[f"{BAD_UTT}-s"].recording
    assert abs(cuts[f"{BAD_UTT}-s"].end - rec.duration) < 1e-9
    _segment_set(data, 0.6)
    with pytest.raises(ApmError, match=r"segment ends at .*\(more than 0.5 s past its end\)"):
        make_manifests(data, data / "manifests2", ["train"])


def test_bad_audio_of_every_set_is_reported_in_one_run(data, tmp_path):
    _write_bad(tmp_path / "8k.wav", "8k")
    _set_wav(data, str(tmp_path / "8k.wav"))
    wav = read_kv(data / "test/wav.scp")
    test_utt = sorted(wav)[0]
    wav[test_utt] = str(tmp_path / "missing.wav")
    _write_bad(tmp_path / "missing.wav", "stereo")
    write_kv(data / "test/wav.scp", wav)
    with pytest.raises(ApmError) as e:
        make_manifests(data, data / "manifests", ["train", "test"])
    msg = str(e.value)
    assert "2 of 2 sets have problems" in msg, msg
    assert BAD_UTT in msg and "8000 Hz" in msg and test_utt in msg and "2 channels" in msg


def test_a_set_with_nothing_usable_fails_even_when_skipping(data, tmp_path):
    _write_bad(tmp_path / "8k.wav", "8k")
    for utt in read_kv(data / "train/wav.scp"):
        _set_wav(data, str(tmp_path / "8k.wav"), utt)
    with pytest.raises(ApmError, match="no usable utterance left.*even with --skip-bad true"):
        make_manifests(data, data / "manifests", ["train"], skip_bad=True)


@pytest.mark.parametrize("nj", [0, -1])
def test_nj_below_one_is_refused(data, nj):
    with pytest.raises(ApmError, match=f"--nj {nj}: .*at least 1"):
        make_manifests(data, data / "manifests", ["train"], nj=nj)


def test_open_set_test_set_passes_stage_1_without_the_training_set(data):
    utt = sorted(read_kv(data / "test/utt2lang"))[0]
    utt2lang = read_kv(data / "test/utt2lang")
    lang, utt2lang[utt] = utt2lang[utt], "uz-uz"
    write_kv(data / "test/utt2lang", utt2lang)
    trials = (data / "test/trials").read_text()
    (data / "test/trials").write_text(
        trials.replace(f"{lang} {utt} target", f"{lang} {utt} nontarget")
    )
    (summary,) = make_manifests(data, data / "manifests", ["test"])
    assert "uz-uz" in summary.languages
