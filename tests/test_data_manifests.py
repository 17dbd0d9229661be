"""Stage 1: lhotse manifests, audio checks, pipes, speed perturbation."""

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, RecordingSet, SupervisionSet

from apm.data.manifests import make_manifests
from apm.data.olr import import_olr
from apm.data.toy import make_toy_corpus
from apm.utils import ApmError, read_kv, write_kv

BAD_UTT = "train-spk0-zh-cn-000"


@pytest.fixture
def data(tmp_path):
    corpus = make_toy_corpus(tmp_path / "olr", {"train": 1, "test": 1}, seconds=(0.8, 1.0))
    import_olr(corpus, tmp_path / "data", ["train", "test"])
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


@pytest.mark.parametrize(
    "kind, message",
    [
        ("corrupt", "cannot read audio"),
        ("empty", "shorter than one 25 ms frame"),
        ("short", "shorter than one 25 ms frame"),
        ("8k", "sampling rate is 8000 Hz"),
        ("stereo", "2 channels"),
        ("pipe", "failed with exit status"),
    ],
)
def test_bad_audio_stops_or_is_skipped(data, tmp_path, kind, message):
    bad = tmp_path / f"{kind}.wav"
    if kind == "pipe":
        entry = f"cat {tmp_path}/missing.wav |"
    else:
        _write_bad(bad, kind)
        entry = str(bad)
    _set_wav(data, entry)
    with pytest.raises(ApmError) as e:
        make_manifests(data, data / "manifests", ["train"], nj=2)
    msg = str(e.value)
    assert BAD_UTT in msg and message in msg and "--skip-bad true" in msg
    assert (entry.split()[1] if kind == "pipe" else str(bad)) in msg, "names the file"
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
