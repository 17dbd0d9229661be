import numpy as np
import pytest

from apm.utils import ApmError, atomic_write, fit_frame_count, num_frames, read_kv, write_kv


def test_num_frames_matches_lhotse():
    from lhotse.utils import compute_num_frames

    for n in [0, 1, 79, 80, 81, 159, 160, 16000, 16079, 16080, 12345]:
        assert num_frames(n, 16000) == compute_num_frames(n / 16000, 0.01, 16000)


def test_fit_frame_count_pads_truncates_and_rejects():
    labels = np.array([1, 2, 3], dtype=np.int32)
    assert fit_frame_count(labels, 5, "u").tolist() == [1, 2, 3, 3, 3]
    assert fit_frame_count(labels, 2, "u").tolist() == [1, 2]
    with pytest.raises(ApmError, match="utterance u1: 3 label frames but 9"):
        fit_frame_count(labels, 9, "u1")


def test_kv_round_trip_and_duplicates(tmp_path):
    write_kv(tmp_path / "utt2lang", {"b": "ru-ru", "a": "zh-cn"})
    assert (tmp_path / "utt2lang").read_text() == "a zh-cn\nb ru-ru\n"
    assert read_kv(tmp_path / "utt2lang") == {"a": "zh-cn", "b": "ru-ru"}
    (tmp_path / "dup").write_text("a x\na y\n")
    with pytest.raises(ApmError, match="dup:2: duplicate key 'a'"):
        read_kv(tmp_path / "dup")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_trials_round_trip_and_errors(tmp_path):
    from apm.data.trials import Trial, read_trials, write_trials

    trials = [Trial("zh-cn", "u1", True), Trial("ru-ru", "u1", False)]
    write_trials(tmp_path / "trials", trials)
    assert read_trials(tmp_path / "trials") == trials
    (tmp_path / "bad").write_text("zh-cn u1 maybe\n")
    with pytest.raises(ApmError, match="bad:1: expected"):
        read_trials(tmp_path / "bad")
