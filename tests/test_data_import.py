"""Stage 0 (egs/olr --olr-root): Kaldi data dir validation and import (apm.data.import_dirs)."""

import subprocess

import pytest

from apm.data.import_dirs import import_data_dirs
from apm.data.kaldi_dir import read_kaldi_dir
from apm.data.toy import make_toy_corpus
from apm.utils import ApmError, read_kv


@pytest.fixture
def corpus(tmp_path):
    return make_toy_corpus(tmp_path / "olr", {"train": 1, "test": 1}, seconds=(0.8, 1.0))


def _edit(path, drop=None, add=""):
    lines = [ln for ln in path.read_text().splitlines(keepends=True) if not drop or drop not in ln]
    path.write_text("".join(lines) + add)


def test_import_writes_sorted_dirs_with_absolute_paths(corpus, tmp_path):
    dirs = import_data_dirs(corpus, tmp_path / "data", ["train", "test"])
    assert [len(d.utt2lang) for d in dirs] == [6, 6]
    wav = read_kv(tmp_path / "data/test/wav.scp")
    assert all(v.startswith(str(corpus)) and v.endswith(".wav") for v in wav.values())
    assert (tmp_path / "data/test/trials").read_text() == (corpus / "test/trials").read_text()
    spk2utt = read_kv(tmp_path / "data/train/spk2utt")
    assert sorted(u for v in spk2utt.values() for u in v.split()) == sorted(dirs[0].utt2lang)


def test_missing_language_names_utterance_and_file(corpus, tmp_path):
    utt = "train-spk0-ru-ru-000"
    _edit(corpus / "train/utt2lang", drop=utt)
    with pytest.raises(ApmError) as e:
        import_data_dirs(corpus, tmp_path / "data", ["train", "test"])
    msg = str(e.value)
    assert utt in msg and "utt2lang" in msg and "has no language" in msg and "--skip-bad" in msg
    assert not (tmp_path / "data").exists(), "nothing is written when a set fails"


def test_duplicate_ids_are_errors_or_skipped(corpus, tmp_path):
    utt = "train-spk1-zh-cn-000"
    _edit(corpus / "train/utt2spk", add=f"{utt} train-spk0\n")
    with pytest.raises(ApmError, match=f"{utt}.*utt2spk.*more than once"):
        import_data_dirs(corpus, tmp_path / "data", ["train", "test"])
    dirs = import_data_dirs(corpus, tmp_path / "data", ["train", "test"], skip_bad=True)
    assert utt not in dirs[0].utt2lang and len(dirs[0].skipped) == 1
    assert utt not in read_kv(tmp_path / "data/train/utt2spk")
    assert utt in (tmp_path / "data/train/skipped").read_text()


def test_missing_audio_file_and_wav_entry(corpus, tmp_path):
    (corpus / "wav/test-spk0-ja-jp-000.wav").unlink()
    _edit(corpus / "test/wav.scp", drop="test-spk1-ja-jp-000")
    with pytest.raises(ApmError) as e:
        read_kaldi_dir(corpus / "test", audio_bases=[corpus])
    assert "test-spk0-ja-jp-000" in str(e.value) and "not found" in str(e.value)
    assert "test-spk1-ja-jp-000" in str(e.value) and "no audio" in str(e.value)
    kd = read_kaldi_dir(corpus / "test", audio_bases=[corpus], skip_bad=True)
    assert len(kd.skipped) == 2 and len(kd.utt2lang) == 4
    assert all(t.utt in kd.utt2lang for t in kd.trials), "trials of skipped utterances go too"


def test_spk2utt_must_agree_with_utt2spk(corpus):
    text = (corpus / "train/spk2utt").read_text()
    (corpus / "train/spk2utt").write_text(text.replace("train-spk1", "train-spkX"))
    with pytest.raises(ApmError, match="spk2utt disagrees"):
        read_kaldi_dir(corpus / "train", audio_bases=[corpus])


def test_trials_checked_against_utterances_and_training_languages(corpus, tmp_path):
    _edit(corpus / "test/trials", add="zh-cn nosuchutt nontarget\n")
    with pytest.raises(ApmError, match="nosuchutt.*not in"):
        import_data_dirs(corpus, tmp_path / "data", ["train", "test"])
    _edit(corpus / "test/trials", drop="nosuchutt", add="ko-kr test-spk0-ja-jp-000 nontarget\n")
    with pytest.raises(ApmError, match="language ko-kr.*training set does not have"):
        import_data_dirs(corpus, tmp_path / "data", ["train", "test"])
    _edit(corpus / "test/trials", drop="ko-kr")
    text = (corpus / "test/trials").read_text()
    (corpus / "test/trials").write_text(
        text.replace("ja-jp test-spk0-ja-jp-000 target", "ja-jp test-spk0-ja-jp-000 nontarget")
    )
    with pytest.raises(ApmError, match="labelled nontarget but utt2lang says ja-jp"):
        import_data_dirs(corpus, tmp_path / "data", ["train", "test"])


def test_open_set_utterances_of_unknown_languages_are_nontarget_only(corpus, tmp_path):
    utt = "test-spk0-ja-jp-000"
    text = (corpus / "test/utt2lang").read_text()
    (corpus / "test/utt2lang").write_text(text.replace(f"{utt} ja-jp", f"{utt} uz-uz"))
    text = (corpus / "test/trials").read_text()
    (corpus / "test/trials").write_text(
        text.replace(f"ja-jp {utt} target", f"ja-jp {utt} nontarget")
    )
    dirs = import_data_dirs(corpus, tmp_path / "data", ["train", "test"])
    assert dirs[1].utt2lang[utt] == "uz-uz"
    assert not any(t.is_target for t in dirs[1].trials if t.utt == utt)


def test_segments_are_validated(corpus, tmp_path):
    seg = "".join(
        f"{u}-a {u} 0.0 0.4\n{u}-b {u} 0.4 0.8\n" for u in read_kv(corpus / "train/wav.scp")
    )
    (corpus / "train/segments").write_text(seg + "bad-seg x 0.5 0.2\n")
    utts = {s.split()[0]: s.split()[1] for s in seg.splitlines()}
    langs = read_kv(corpus / "train/utt2lang")
    for name, mapping in [("utt2spk", "train-spk0"), ("utt2lang", None)]:
        (corpus / f"train/{name}").write_text(
            "".join(f"{u} {mapping or langs[r]}\n" for u, r in sorted(utts.items()))
        )
    (corpus / "train/spk2utt").unlink()
    with pytest.raises(ApmError, match="bad-seg.*bad segment"):
        read_kaldi_dir(corpus / "train", audio_bases=[corpus])
    kd = read_kaldi_dir(corpus / "train", audio_bases=[corpus], skip_bad=True)
    assert len(kd.utt2lang) == 12 and len(kd.wav) == 6
    assert kd.recording_of("train-spk0-zh-cn-000-b") == "train-spk0-zh-cn-000"


def test_segment_times_of_long_recordings_are_written_exactly(corpus, tmp_path):
    rec = "train-spk0-zh-cn-000"
    times = [(10003.406, 10012.125), (0.0, 0.5), (7200.1234567, -1.0)]
    seg = "".join(f"{rec}-{i} {rec} {a} {b}\n" for i, (a, b) in enumerate(times))
    (corpus / "train/segments").write_text(seg)
    for name, values in [("utt2spk", ["train-spk0"] * 3), ("utt2lang", ["zh-cn", "ru-ru"] * 2)]:
        (corpus / f"train/{name}").write_text(
            "".join(f"{rec}-{i} {values[i]}\n" for i in range(len(times)))
        )
    (corpus / "train/spk2utt").unlink()
    import_data_dirs(corpus, tmp_path / "data", ["train"])
    written = (tmp_path / "data/train/segments").read_text()
    assert "10003.406 10012.125" in written and "7200.1234567 -1" in written, written
    kd = read_kaldi_dir(tmp_path / "data/train")
    assert [(kd.segments[f"{rec}-{i}"].start, kd.segments[f"{rec}-{i}"].end)
            for i in range(len(times))] == times  # fmt: skip


def test_tab_separated_files_are_read_and_extra_fields_refused(corpus, tmp_path):
    for s, name in [("train", "utt2lang"), ("train", "utt2spk"), ("train", "wav.scp"),
                    ("test", "trials"), ("test", "utt2lang")]:  # fmt: skip
        path = corpus / s / name
        path.write_text(path.read_text().replace(" ", "\t"))
    dirs = import_data_dirs(corpus, tmp_path / "data", ["train", "test"])
    assert dirs[0].languages == ["ja-jp", "ru-ru", "zh-cn"]
    assert len(dirs[1].trials) == 18
    assert read_kv(tmp_path / "data/train/utt2lang") == dirs[0].utt2lang

    text = (corpus / "train/utt2lang").read_text().splitlines(keepends=True)
    text[2] = text[2].rstrip("\n") + " extra\n"
    (corpus / "train/utt2lang").write_text("".join(text))
    with pytest.raises(ApmError) as e:
        import_data_dirs(corpus, tmp_path / "data", ["train", "test"])
    msg = str(e.value)
    assert "train/utt2lang:3" in msg and "expected 2" in msg and "fix or remove" in msg, msg


def test_segments_line_with_wrong_field_count_names_the_line(corpus):
    (corpus / "train/segments").write_text("a train-spk0-zh-cn-000 0.0 0.5\nb x 0.1\n")
    with pytest.raises(ApmError, match=r"segments:2: expected 4 .*<utt> <recording> <start> <end>"):
        read_kaldi_dir(corpus / "train", audio_bases=[corpus])


def test_test_sets_need_trials_with_a_target_per_known_utterance(corpus, tmp_path):
    trials = (corpus / "test/trials").read_text()
    (corpus / "test/trials").unlink()
    with pytest.raises(ApmError, match="test set.*test have no trials file.*--test-sets"):
        import_data_dirs(corpus, tmp_path / "data", ["train", "test"])
    utt = "test-spk1-ru-ru-000"
    (corpus / "test/trials").write_text(trials.replace(f"ru-ru {utt} target\n", ""))
    with pytest.raises(ApmError, match=f"{utt} \\(language ru-ru\\).*no target trial"):
        import_data_dirs(corpus, tmp_path / "data", ["train", "test"])
    assert not (tmp_path / "data").exists()


def test_relative_path_in_a_pipe_is_named_with_its_line(corpus, tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = (corpus / "train/wav.scp").read_text().splitlines()
    rec, path = lines[1].split()
    lines[1] = f"{rec} sox {path} -t wav - |"
    (corpus / "train/wav.scp").write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        kd = read_kaldi_dir(corpus / "train", audio_bases=[corpus])
    assert kd.wav[rec] == f"sox {path} -t wav - |", "commands are kept as written"
    assert f"train/wav.scp:2: the command of {rec} names {path} by a relative path" in caplog.text


def test_nothing_usable_stops_stage_0_even_when_skipping(corpus, tmp_path):
    (corpus / "train/utt2lang").write_text(
        "".join(f"{u} zh-cn\n" for u in read_kv(corpus / "train/utt2lang"))
    )
    with pytest.raises(ApmError, match="training set has 1 language"):
        import_data_dirs(corpus, tmp_path / "data", ["train"], skip_bad=True)
    (corpus / "train/utt2spk").write_text("")
    with pytest.raises(ApmError, match="no usable utterance .*even with --skip-bad true"):
        import_data_dirs(corpus, tmp_path / "data", ["train"], skip_bad=True)


def test_only_the_scored_sets_need_trials(corpus, tmp_path):
    """A set outside `scored_sets` (an enrollment set training the back-end) needs none."""
    (corpus / "test/trials").unlink()
    dirs = import_data_dirs(corpus, tmp_path / "data", ["train", "test"], scored_sets=[])
    assert dirs[1].trials is None and (tmp_path / "data/test/utt2lang").is_file()
    assert not (tmp_path / "data/test/trials").exists()
    with pytest.raises(ApmError, match="test set.*test have no trials file"):
        import_data_dirs(corpus, tmp_path / "data2", ["train", "test"], scored_sets=["test"])
    with pytest.raises(ApmError, match="scored set.*dev are not among the sets"):
        import_data_dirs(corpus, tmp_path / "data2", ["train", "test"], scored_sets=["dev"])


def test_step_script_imports_and_names_a_missing_root_or_set(
    corpus, tmp_path, repo_root, shell_env
):
    """steps/import_data_dirs.sh: the generic stage-0 step (egs/olr --olr-root runs it)."""
    step = str(repo_root / "steps/import_data_dirs.sh")
    data = tmp_path / "data"
    done = subprocess.run([step, "--scored-sets", "test", str(corpus), str(data), "train", "test"],
                          env=shell_env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert read_kv(data / "test/utt2lang") == read_kv(corpus / "test/utt2lang")
    bad = subprocess.run([step, str(tmp_path / "nowhere"), str(data), "train", "test"],
                         env=shell_env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (
        bad.returncode == 1 and f"data root {tmp_path / 'nowhere'}: no such directory" in bad.stderr
    )
    bad = subprocess.run([step, str(corpus), str(data), "train", "task9"],
                         env=shell_env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 1
    assert "no data dir for set(s) task9; it has: test train" in bad.stderr, bad.stderr
