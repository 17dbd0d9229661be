"""Typed config values (apm.utils.config helpers) in every stage's config: integers must be
integers, numbers may be written as YAML 1.1 strings (`2e-3`), units are range-checked."""

from __future__ import annotations

import pytest

from apm.align.config import load_align_config
from apm.backend import load_backend_config
from apm.features.fbank import load_feature_config
from apm.train.config import load_system_config, resolve_config
from apm.train.toy import toy_config
from apm.utils import ApmError
from apm.utils.config import check_int, check_number


def test_check_int_refuses_fractions_and_accepts_whole_floats():
    assert check_int(10.0, "epochs", "train") == 10 and type(check_int(10.0, "e", "t")) is int
    for bad in (2.5, True, "3", None, float("nan")):
        with pytest.raises(ApmError, match="'train.epochs' is .*; it must be an integer"):
            check_int(bad, "epochs", "train")
    with pytest.raises(ApmError, match=r"x.yaml: 'train.epochs' is 0; it must be an integer >= 1"):
        check_int(0, "epochs", "train", minimum=1, path="x.yaml")


def test_check_number_reads_numeric_strings():
    assert check_number("2e-3", "lr", "train", strict=True) == 0.002
    assert check_number(" 1E-4 ", "lr", "train") == 1e-4
    for bad in ("fast", "nan", float("inf"), True, [1]):
        with pytest.raises(ApmError, match="'train.lr' is .*; it must be a number"):
            check_number(bad, "lr", "train")
    with pytest.raises(ApmError, match="must be a number >= 0.01 and <= 0.1; in seconds"):
        check_number(25, "frame_length", "fbank", minimum=0.01, maximum=0.1, hint="in seconds")


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("key", ["epochs", "batch_size", "average_last", "chunk_min_frames"])
def test_train_integers(key):
    with pytest.raises(ApmError, match=rf"x.yaml: 'train.{key}' is 2.5; it must be an integer"):
        resolve_config(toy_config(**{key: 2.5}), "x.yaml")
    cfg = resolve_config(toy_config(**{key: 2.0, "chunk_max_frames": 400}), "x.yaml")
    assert cfg["train"][key] == 2 and type(cfg["train"][key]) is int


def test_train_lr_in_yaml_1_1_exponent_form(tmp_path):
    # PyYAML reads 2e-3 (no dot) as a string
    path = write(tmp_path, "model: {}\nloss: {}\ntrain:\n  lr: 2e-3\n  weight_decay: 1e-5\n")
    cfg = load_system_config(path)
    assert cfg["train"]["lr"] == 0.002 and cfg["train"]["weight_decay"] == 1e-5
    path = write(tmp_path, "model: {}\nloss: {}\ntrain:\n  lr: fast\n")
    with pytest.raises(ApmError, match="'train.lr' is 'fast'; it must be a number > 0"):
        load_system_config(path)


def test_train_seed_and_extract_integers():
    with pytest.raises(ApmError, match="'seed' is 1.5; it must be an integer"):
        resolve_config({**toy_config(), "seed": 1.5}, "x.yaml")
    with pytest.raises(ApmError, match="'extract.max_chunk_frames' is 500.5"):
        resolve_config({**toy_config(), "extract": {"max_chunk_frames": 500.5}}, "x.yaml")
    with pytest.raises(
        ApmError, match=r"train.amp is 'yes'; choose one of \('none', 'bf16', 'fp16'\)"
    ):
        resolve_config(toy_config(amp="yes"), "x.yaml")


def test_fbank_frame_length_unit_and_integer_bins(tmp_path):
    with pytest.raises(ApmError, match=r"frame_length is in seconds \(0.025\), got 25.*25 ms"):
        load_feature_config(write(tmp_path, "fbank:\n  frame_length: 25\n"))
    with pytest.raises(ApmError, match="'fbank.num_mel_bins' is 40.5; it must be an integer"):
        load_feature_config(write(tmp_path, "fbank:\n  num_mel_bins: 40.5\n"))
    with pytest.raises(ApmError, match="'fbank.window_type' is 'hann'; choose one of povey"):
        load_feature_config(write(tmp_path, "fbank:\n  window_type: hann\n"))
    with pytest.raises(ApmError, match="'cuts_per_job' is 2.5"):
        load_feature_config(write(tmp_path, "cuts_per_job: 2.5\n"))
    cfg = load_feature_config(write(tmp_path, "fbank:\n  frame_length: 0.025\n  low_freq: 2e1\n"))
    assert cfg.fbank == {"num_mel_bins": 40, "frame_length": 0.025, "low_freq": 20.0}


def test_backend_types(tmp_path):
    assert load_backend_config(write(tmp_path, "lr_c: 1e-1\nlda_dim: 50.0\n")).lr_c == 0.1
    with pytest.raises(ApmError, match="'lda_dim' is 2.5; it must be an integer >= 1"):
        load_backend_config(write(tmp_path, "lda_dim: 2.5\n"))
    with pytest.raises(ApmError, match="'lr_max_iter' is '100'"):
        load_backend_config(write(tmp_path, "lr_max_iter: '100'\n"))


def test_align_types(tmp_path):
    assert load_align_config(write(tmp_path, "min_duration: 3e-1\n")).min_duration == 0.3
    with pytest.raises(ApmError, match="'report_top_phones' is 2.5; it must be an integer"):
        load_align_config(write(tmp_path, "report_top_phones: 2.5\n"))
    with pytest.raises(ApmError, match="'silence_db' is 55; it must be a number <= 0"):
        load_align_config(write(tmp_path, "silence_db: 55\n"))
