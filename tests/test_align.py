"""Stage 3 (apm.align): phone tables, label warping, ark round trip, PocketSphinx decoding on
synthesized speech-like audio, oracle and Kaldi import, resumption and bad input."""

from __future__ import annotations

import json
import logging
import subprocess

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import lfilter

from apm.align.arkio import read_labels, write_labels
from apm.align.config import AlignConfig, load_align_config
from apm.align.decode import JobSummary, align_cut, split
from apm.align.labels import segments_to_frames, warp_labels
from apm.align.phones import PhoneTable, map_labels, normalise_table
from apm.align.pipeline import align_phones
from apm.align.sphinx import SphinxAligner, default_model
from apm.features.readers import perturbed_source, read_phones
from apm.utils import ApmError, num_frames

SR = 16000
LANGS = ("ru-ru", "zh-cn")


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Formant-synthesized syllables: voiced vowels (pulse train through three resonators),
    noise fricatives and short pauses, so the decoder sees speech-like spectra."""
    rng = np.random.default_rng(seed)
    out = []
    while sum(map(len, out)) < seconds * SR:
        n = int(rng.uniform(0.06, 0.16) * SR)
        kind = rng.choice(["vowel", "vowel", "fricative", "pause"])
        if kind == "vowel":
            x = np.zeros(n)
            x[:: int(SR / rng.uniform(100, 160))] = 1.0
            for f in (rng.uniform(300, 900), rng.uniform(900, 2300), rng.uniform(2300, 3200)):
                r = np.exp(-np.pi * 80 / SR)
                x = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / SR), r * r], x)
        elif kind == "fricative":
            x = np.diff(rng.normal(size=n + 1)) * 0.3
        else:
            x = rng.normal(size=n) * 1e-3
        out.append(x / (np.abs(x).max() + 1e-9) * (0.5 if kind != "pause" else 1e-3))
    return np.concatenate(out)[: int(seconds * SR)].astype(np.float32)


def make_cuts(tmp_path, audio: dict[str, np.ndarray], perturb: bool = False, features: bool = True):
    """A stage-2 style directory: cuts with recordings, language supervisions, fbank features."""
    from lhotse import (
        CutSet,
        Fbank,
        NumpyFilesWriter,
        Recording,
        RecordingSet,
        SupervisionSegment,
        SupervisionSet,
    )

    src = tmp_path / "fbank"
    src.mkdir()
    recs, sups = [], []
    for i, (utt, x) in enumerate(sorted(audio.items())):
        sf.write(tmp_path / f"{utt}.wav", x, SR, subtype="PCM_16")
        rec = Recording.from_file(tmp_path / f"{utt}.wav", recording_id=utt)
        recs.append(rec)
        lang = LANGS[i % len(LANGS)]
        sups.append(SupervisionSegment(utt, utt, 0, rec.duration, language=lang, speaker="s"))
    cuts = CutSet.from_manifests(
        RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups)
    )
    cuts = cuts.modify_ids(lambda cid: cid.rsplit("-", 1)[0])  # ids = utterance ids
    if perturb:
        cuts = cuts + cuts.perturb_speed(0.9) + cuts.perturb_speed(1.1)
    if features:
        cuts = cuts.compute_and_store_features(
            Fbank(), storage_path=tmp_path / "feats", storage_type=NumpyFilesWriter
        )
    cuts.to_file(src / "cuts.jsonl.gz")
    return src, {c.id: c for c in cuts}


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speech")
    audio = {f"utt{i}": speech_like(1.2 + 0.3 * i, seed=i) for i in range(4)}
    return make_cuts(tmp, audio, perturb=True)


@pytest.fixture(scope="module")
def decoded(speech_dir, tmp_path_factory):
    """One PocketSphinx run (2 jobs) over the speech-like set, shared by several tests."""
    src, cuts = speech_dir
    dst = tmp_path_factory.mktemp("ali") / "ali"
    report = align_phones(src, dst, "pocketsphinx", AlignConfig(), nj=2)
    return dst, cuts, report


# --- phone tables, labels, ark I/O -------------------------------------------------------


def test_model_phone_table_has_silence_first_and_no_fillers():
    table = SphinxAligner.phone_table({})
    assert table.symbols[0] == "SIL" and len(table) == 40
    assert "AA" in table.symbols and not any(s.startswith("+") for s in table.symbols)
    assert default_model()[1].endswith("en-us-phone.lm.bin")


def test_kaldi_table_normalisation(tmp_path):
    (tmp_path / "phones.txt").write_text(
        "<eps> 0\nSIL 1\nSIL_B 2\nSPN_S 3\nAA_B 4\nAA_E 5\nB_I 6\n#0 7\n#1 8\n"
    )
    table, lookup = normalise_table(read_phones(tmp_path / "phones.txt"), ["SIL", "SPN"], True)
    assert table.symbols == ("SIL", "AA", "B")
    assert list(lookup) == [-1, 0, 0, 0, 1, 1, 2, -1, -1]
    assert list(map_labels(np.array([1, 4, 5, 6, 3]), lookup, "u", "kaldi")) == [0, 1, 1, 2, 0]
    with pytest.raises(ApmError, match="utterance u2 .*phone id 7"):
        map_labels(np.array([1, 7]), lookup, "u2", "kaldi")
    with pytest.raises(ApmError, match="no silence phone"):
        normalise_table({"AA": 1, "B": 2}, ["SIL"])


def test_phone_table_round_trip(tmp_path):
    table = PhoneTable(("SIL", "AA", "B"))
    table.write(tmp_path / "phones.txt")
    assert read_phones(tmp_path / "phones.txt") == {"SIL": 0, "AA": 1, "B": 2}
    with pytest.raises(ApmError, match="must start with SIL"):
        PhoneTable(("AA", "SIL"))


def test_segments_warp_and_perturbed_ids():
    labels = segments_to_frames([(3, 0, 1), (5, 4, 5)], shift=1)
    assert list(labels) == [3, 3, 3, 0, 0, 5, 5]
    assert perturbed_source("a_b_sp0.9") == ("a_b", 0.9)
    assert perturbed_source("spk_sp") is None
    orig = np.repeat(np.arange(10, dtype=np.int32), 10)  # 100 frames, 10 per phone
    slow = warp_labels(orig, 0.9, 111, "x_sp0.9")
    fast = warp_labels(orig, 1.1, 91, "x_sp1.1")
    assert len(slow) == 111 and len(fast) == 91
    # Every phone keeps its order and lasts about 10 / factor frames.
    assert list(np.unique(slow)) == list(range(10)) and np.all(np.diff(slow) >= 0)
    assert abs(np.sum(fast == 4) - 10 / 1.1) <= 1 and abs(np.sum(slow == 4) - 10 / 0.9) <= 1
    with pytest.raises(ApmError, match="x_sp1.1"):
        warp_labels(orig, 1.1, 100, "x_sp1.1")


def test_labels_are_written_as_int32(tmp_path):
    items = {"b": np.array([0, 1, 2], np.int64), "a": np.arange(500) % 40}
    assert write_labels(sorted(items.items()), tmp_path / "x.ark", tmp_path / "x.scp") == 2
    back = read_labels(tmp_path / "x.scp")
    assert sorted(back) == ["a", "b"]
    for k, v in items.items():
        assert back[k].dtype == np.int32 and np.array_equal(back[k], v)


def test_split_is_contiguous_and_complete():
    parts = split(list(range(7)), 3)
    assert [len(p) for p in parts] == [2, 3, 2] and sum(parts, []) == list(range(7))
    assert split([1], 4) == [[1]]


def test_conf_loads_and_rejects_unknown_keys(tmp_path, repo_root):
    cfg = load_align_config(repo_root / "egs/olr/conf/align.yaml")
    assert cfg.perturbed == "warp" and cfg.pocketsphinx["lw"] == 1.5
    (tmp_path / "bad.yaml").write_text("lw: 2\n")
    with pytest.raises(ApmError, match="unknown keys"):
        load_align_config(tmp_path / "bad.yaml")


# --- PocketSphinx on synthesized audio -----------------------------------------------------


def test_decoded_frames_match_features(decoded):
    dst, cuts, report = decoded
    ali = read_labels(dst / "ali.scp")
    assert sorted(ali) == sorted(cuts)  # originals and their speed copies
    for cut_id, cut in cuts.items():
        assert len(ali[cut_id]) == cut.num_frames == cut.load_features().shape[0]
        assert len(ali[cut_id]) == num_frames(cut.num_samples, SR)
    speech = np.concatenate(list(ali.values()))
    assert 0 < np.mean(speech == 0) < 0.9 and len(np.unique(speech)) > 5
    assert read_phones(dst / "phones.txt")["SIL"] == 0
    summary = report["summary"]
    assert summary["decoded"] == 4 and summary["perturbed"] == "warp" and summary["failed"] == 0
    assert set(report["languages"]) == set(LANGS)
    for stats in report["languages"].values():
        assert stats["utterances"] == 6 and stats["mean_phone_ms"] > 10 and stats["top_phones"]
    on_disk = json.loads((dst / "report.json").read_text())
    assert on_disk["languages"] == report["languages"]
    assert "| ru-ru |" in (dst / "report.md").read_text()


def test_warped_copy_follows_original(decoded):
    dst, cuts, _ = decoded
    ali = read_labels(dst / "ali.scp")
    orig, slow = ali["utt3"], ali["utt3_sp0.9"]
    assert np.array_equal(slow, warp_labels(orig, 0.9, len(slow), "utt3_sp0.9"))


def test_rerun_redoes_only_unfinished_jobs(decoded, speech_dir, caplog):
    dst, _, _ = decoded
    src, _ = speech_dir
    before = {p.name: p.stat().st_mtime_ns for p in (dst / "jobs").iterdir()}
    (dst / "jobs/ali.2.json").unlink()  # as if the run was killed before job 2 finished
    with caplog.at_level(logging.INFO):
        align_phones(src, dst, "pocketsphinx", AlignConfig(), nj=2)
    assert "1 of 2 jobs already finished" in caplog.text
    after = {p.name: p.stat().st_mtime_ns for p in (dst / "jobs").iterdir()}
    assert after["ali.1.ark"] == before["ali.1.ark"] and after["ali.2.ark"] != before["ali.2.ark"]
    assert len(read_labels(dst / "ali.scp")) == 12


def test_decoder_recovers_after_a_failure():
    aligner = SphinxAligner(AlignConfig().pocketsphinx)
    with pytest.raises(Exception):  # noqa: B017 - whatever PocketSphinx raises on one sample
        aligner.decode(np.zeros(1, np.int16))
    labels = aligner.decode((speech_like(1.0, 7) * 20000).astype(np.int16))
    assert len(labels) == num_frames(SR, SR) and (labels != 0).any()


def test_short_and_silent_audio_are_all_silence(tmp_path, caplog):
    audio = {"short": speech_like(0.2, 1), "silent": np.zeros(SR, np.float32)}
    _, cuts = make_cuts(tmp_path, audio, features=False)
    aligner = SphinxAligner(AlignConfig().pocketsphinx)
    summary = JobSummary("")
    with caplog.at_level(logging.WARNING):
        for cut in cuts.values():
            labels = align_cut(aligner, cut, AlignConfig(), summary)
            assert len(labels) == num_frames(cut.num_samples, SR) and not labels.any()
    assert summary.too_short == ["short"] and summary.silence_only == ["silent"]
    assert "short: 0.20 s < 0.30 s" in caplog.text and "silent: no frame above" in caplog.text


def test_unreadable_utterance_is_named_counted_or_skipped(tmp_path):
    audio = {"good": speech_like(1.0, 2), "broken": speech_like(1.0, 3)}
    src, _ = make_cuts(tmp_path, audio, features=False)
    (tmp_path / "broken.wav").write_bytes(b"RIFF-not-really-a-wave")
    with pytest.raises(ApmError, match=r"1 utterance\(s\) without labels.*broken: .*--skip-bad"):
        align_phones(src, tmp_path / "ali", "pocketsphinx", AlignConfig(), nj=1)
    report = align_phones(src, tmp_path / "ali", "pocketsphinx", AlignConfig(), skip_bad=True)
    assert report["summary"]["failed"] == 1 and list(report["failed"]) == ["broken"]
    assert list(read_labels(tmp_path / "ali/ali.scp")) == ["good"]


# --- oracle and Kaldi import ---------------------------------------------------------------


def oracle_dir(tmp_path, cuts, name="oracle"):
    """Oracle labels keyed by utterance id (originals only), with our phone convention."""
    d = tmp_path / name
    d.mkdir()
    items = []
    for cut_id, cut in sorted(cuts.items()):
        if perturbed_source(cut_id) is None:
            n = num_frames(cut.num_samples, SR)
            items.append((cut_id, (np.arange(n) // 7 % 4).astype(np.int32)))
    write_labels(items, d / "ali.ark", d / "ali.scp")
    (d / "phones.txt").write_text("SIL 0\na 1\ni 2\nu 3\n")
    return d


def test_oracle_conversion_warps_copies_and_skips_nmi(speech_dir, tmp_path):
    src, cuts = speech_dir
    odir = oracle_dir(tmp_path, cuts)
    raw = AlignConfig(oracle_inventory="raw")
    report = align_phones(src, tmp_path / "ali", "oracle", raw, oracle_dir=odir)
    ali = read_labels(tmp_path / "ali/ali.scp")
    orig = read_labels(odir / "ali.scp")
    assert sorted(ali) == sorted(cuts)
    assert np.array_equal(ali["utt1"], orig["utt1"])
    assert len(ali["utt1_sp1.1"]) == cuts["utt1_sp1.1"].num_frames
    assert read_phones(tmp_path / "ali/phones.txt") == {"SIL": 0, "a": 1, "i": 2, "u": 3}
    assert all("oracle" not in st for st in report["languages"].values())


def test_alignment_of_another_set_fails_even_when_skipping(speech_dir, tmp_path):
    src, cuts = speech_dir
    odir = oracle_dir(tmp_path, {f"other{k}": c for k, c in enumerate(cuts.values())})
    with pytest.raises(ApmError, match=r"none of the \d+ cuts .* got labels .*stale oracle"):
        align_phones(src, tmp_path / "ali", "oracle", AlignConfig(), oracle_dir=odir,
                     skip_bad=True)  # fmt: skip
    assert not (tmp_path / "ali" / "ali.scp").exists()


def test_oracle_labels_in_the_shared_inventory(speech_dir, tmp_path):
    src, cuts = speech_dir
    odir = oracle_dir(tmp_path, cuts)
    report = align_phones(src, tmp_path / "ali", "oracle", AlignConfig(), oracle_dir=odir)
    table = read_phones(tmp_path / "ali/phones.txt")
    assert table == {"SIL": 0, "V_close_front": 1, "V_open": 2, "V_close_back": 3}
    raw_to_shared = np.array([0, 2, 1, 3])  # SIL a i u -> their classes
    ali, orig = read_labels(tmp_path / "ali/ali.scp"), read_labels(odir / "ali.scp")
    assert np.array_equal(ali["utt1"], raw_to_shared[orig["utt1"]])
    info = report["summary"]["language_information"]
    assert set(info) == {"oracle"} and 0 <= info["oracle"]["share"] <= 1


def test_report_compares_with_oracle(decoded, speech_dir, tmp_path):
    src, cuts = speech_dir
    dst, _, _ = decoded
    report = align_phones(
        src, dst, "pocketsphinx", AlignConfig(), oracle_dir=oracle_dir(tmp_path, cuts)
    )
    for stats in report["languages"].values():
        assert 0 <= stats["oracle"]["nmi"] <= 1 and stats["oracle"]["frames"] > 0
    info = report["summary"]["language_information"]
    assert set(info) == {"pocketsphinx", "oracle raw", "oracle shared"}
    assert info["oracle shared"]["phones"] <= info["oracle raw"]["phones"]
    assert "Share of the language entropy" in (dst / "report.md").read_text()


def kaldi_dir(tmp_path, cuts, shorten: int = 0, drop: str | None = None):
    d = tmp_path / "kaldi"
    d.mkdir()
    (d / "phones.txt").write_text("<eps> 0\nSIL 1\nAA_B 2\nAA_E 3\nK_S 4\n#0 5\n")
    items = [
        (cid, (1 + np.arange(c.num_frames - shorten) // 5 % 4).astype(np.int32))
        for cid, c in sorted(cuts.items())
        if cid != drop
    ]
    write_labels(items, d / "ali.ark", d / "ali.scp")
    return d


def test_kaldi_import(speech_dir, tmp_path):
    src, cuts = speech_dir
    kdir = kaldi_dir(tmp_path, cuts, shorten=2)  # within the tolerance: edge-padded
    align_phones(src, tmp_path / "ali", f"kaldi:{kdir}", AlignConfig())
    ali = read_labels(tmp_path / "ali/ali.scp")
    assert read_phones(tmp_path / "ali/phones.txt") == {"SIL": 0, "AA": 1, "K": 2}
    for cid, cut in cuts.items():
        assert len(ali[cid]) == cut.num_frames
    assert list(ali["utt0"][:20]) == [0] * 5 + [1] * 10 + [2] * 5


def test_kaldi_import_missing_cut_is_named(speech_dir, tmp_path):
    src, cuts = speech_dir
    kdir = kaldi_dir(tmp_path, cuts, drop="utt2_sp0.9")
    # The copy's original has labels, so it is warped; only a missing original is an error.
    align_phones(src, tmp_path / "ali", f"kaldi:{kdir}", AlignConfig())
    (kdir / "ali.scp").write_text(
        "".join(ln for ln in (kdir / "ali.scp").read_text().splitlines(True) if "utt2" not in ln)
    )
    with pytest.raises(ApmError, match=r"3 utterance\(s\).*utt2: no labels"):
        align_phones(src, tmp_path / "ali", f"kaldi:{kdir}", AlignConfig())


def test_frame_count_mismatch_is_a_clear_error(speech_dir, tmp_path):
    src, cuts = speech_dir
    kdir = kaldi_dir(tmp_path, cuts, shorten=5)
    with pytest.raises(ApmError, match=r"utterance utt0: \d+ label frames but \d+ feature frames"):
        align_phones(src, tmp_path / "ali", f"kaldi:{kdir}", AlignConfig())


def test_step_script_runs_oracle_and_reports_errors(speech_dir, tmp_path, repo_root, shell_env):
    src, cuts = speech_dir
    odir = oracle_dir(tmp_path, cuts)
    step = str(repo_root / "steps/align_phones.sh")
    ok = subprocess.run(
        [step, "--nj", "2", "--config", str(repo_root / "egs/olr/conf/align.yaml"),
         "--ali-from", "oracle", "--oracle-dir", str(odir), str(src), str(tmp_path / "ali")],
        env=shell_env, capture_output=True, text=True,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "ali/report.md").is_file()
    bad = subprocess.run(
        [step, "--ali-from", "kaldi:/nonexistent", str(src), str(tmp_path / "ali2")],
        env=shell_env, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 1 and "ERROR" in bad.stderr and "/nonexistent" in bad.stderr
    assert "Traceback" not in bad.stderr
