"""The model package's input side, without a trained model: audio loading refuses NaN/Inf
samples with the input named, silence is warned about, cuda without CUDA is a clear error."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO

from apm.features.fbank import load_feature_config, make_extractor
from apm.infer.identifier import LanguageIdentifier, read_audio
from apm.utils import ApmError
from apm.utils.dist import pick_device


def _input_side() -> LanguageIdentifier:
    """A LanguageIdentifier with only what load() and features() use (no network)."""
    lid = object.__new__(LanguageIdentifier)
    lid.feature_config = load_feature_config(REPO / "egs/olr/conf/fbank.yaml")
    lid.extractor = make_extractor(lid.feature_config)
    lid.settings = {"extract": {"min_voiced_frames": 10}, "cmn": "utterance"}
    return lid


@pytest.mark.parametrize("bad, name", [(np.nan, "NaN"), (np.inf, "+Inf"), (-np.inf, "-Inf")])
def test_non_finite_samples_are_refused_and_named(tmp_path, bad, name):
    x = np.full(16000, 0.1, dtype=np.float32)
    x[777] = bad
    x[900:902] = np.nan
    path = tmp_path / "bad.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    counts = "3 NaN" if name == "NaN" else f"2 NaN, 1 {name}"
    expected = r"audio has 3 NaN or infinite sample\(s\) \(the first is sample 777\): " + re.escape(
        f"{counts} (sample 777 is {name}); the file is corrupt"
    )
    with pytest.raises(ApmError, match=expected):
        read_audio(path)
    with pytest.raises(ApmError, match=re.escape(f"(sample 777 is {name}); pass finite samples")):
        _input_side().load(x, 16000)


def test_a_directory_is_reported_as_a_directory(tmp_path):
    (tmp_path / "clips").mkdir()
    for source in (tmp_path / "clips", str(tmp_path / "clips")):
        with pytest.raises(ApmError, match="is a directory, not an audio file"):
            read_audio(source)
        with pytest.raises(ApmError, match="is a directory"):
            _input_side().load(source)
    with pytest.raises(ApmError, match="^no such file$"):
        read_audio(tmp_path / "missing.wav")
    from apm.bin.identify import read_wav_scp

    with pytest.raises(ApmError, match="clips: is a directory; --wav-scp takes a Kaldi wav.scp"):
        read_wav_scp(str(tmp_path / "clips"))


def test_digital_silence_is_warned_about(caplog):
    lid = _input_side()
    with caplog.at_level(logging.WARNING):
        frames = lid.features(lid.load(np.zeros(32000, dtype=np.float32), 16000), "quiet.wav")
    assert len(frames) > 0
    assert "quiet.wav: no voiced frames" in caplog.text and "digital silence" in caplog.text
    caplog.clear()
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    speechy = 0.3 * np.sin(2 * np.pi * 150 * t) * (1 + rng.standard_normal(32000) * 0.1)
    with caplog.at_level(logging.WARNING):
        lid.features(lid.load(speechy.astype(np.float32), 16000), "loud.wav")
    assert "no voiced frames" not in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_a_clear_error(device):
    with pytest.raises(ApmError, match=f"device {device} requested but torch .* sees no CUDA"):
        pick_device(device, 0)
    assert pick_device("auto", 0).type == "cpu"
