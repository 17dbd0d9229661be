"""Language identification of new audio with a model package (`apm.infer.package`).

The audio goes through exactly what the recipe does to its sets: fbank + energy VAD
(stage 2, `apm.features.fbank.fbank_and_vad`), the VAD-kept frames with the system's CMN
(`apm.features.readers.normalize_voiced`; all frames when fewer than `min_voiced_frames` are
voiced, as stage 5), the x-vector and language outputs (`apm.extract.xvectors.embed_batch`,
chunking long utterances), then the package's back-end: the one stage 6 saved, with its
calibration (posteriors). Audio of any sample rate is resampled to 16 kHz and multi-channel
audio is averaged to mono.

    from apm import LanguageIdentifier
    lid = LanguageIdentifier.from_dir("exp/apm_am/model")
    result = lid.identify("x.wav")   # result.language, result.posteriors, result.embedding
"""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from apm.data.audio import AudioProblem, check_finite, run_pipe
from apm.data.kaldi_dir import is_pipe
from apm.extract.xvectors import BATCH_FRAMES, embed_batch, load_system
from apm.features.fbank import FeatureConfig, as_stored, fbank_and_vad, make_extractor
from apm.features.readers import normalize_voiced
from apm.features.vad import VadConfig
from apm.infer.package import SAMPLE_RATE, load_package
from apm.utils import ApmError, num_frames
from apm.utils.dist import pick_device

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
MIN_FRAMES = 5  # 50 ms: less is surely not speech


@dataclass
class Identification:
    """The answer for one input.

    language: the best-scored language, or `unknown` when its posterior is below the
        threshold; posteriors: {language: posterior} in languages.txt order, calibrated when
        the package's back-end is (stage 6 with dev sets: their logs are what stage 6 writes
        in scores/calibrated/); scores: the raw back-end scores (what stage 6 writes in the
        score files); embedding: the x-vector.
    """

    name: str
    language: str
    posterior: float
    posteriors: dict[str, float]
    scores: np.ndarray
    embedding: np.ndarray
    top: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self, top_k: int = 3) -> dict:
        return {
            "input": self.name,
            "language": self.language,
            "posterior": round(self.posterior, 6),
            "top": [[lang, round(p, 6)] for lang, p in self.top[:top_k]],
            "posteriors": {k: round(v, 6) for k, v in self.posteriors.items()},
        }


def read_audio(source: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(float32 samples [-1, 1] with channels [N, C], sample rate) of a file soundfile reads
    (wav, flac, ogg...) or of a Kaldi `command |` pipe writing such a file to stdout."""
    text = os.fspath(source)
    try:
        if is_pipe(text):
            data, rate = sf.read(io.BytesIO(run_pipe(text)), dtype="float32", always_2d=True)
        else:
            if Path(text).is_dir():
                raise ApmError("is a directory, not an audio file: give the audio files in it "
                               "(e.g. dir/*.wav) or a --wav-scp listing them")  # fmt: skip
            if not Path(text).is_file():
                raise ApmError("no such file")
            data, rate = sf.read(text, dtype="float32", always_2d=True)
        check_finite(data)
    except AudioProblem as e:
        if e.what.startswith("audio has"):  # NaN/Inf samples
            raise ApmError(f"{e.what}; the file is corrupt: decode or copy it again") from None
        raise ApmError(str(e)) from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise ApmError(f"cannot decode audio ({e})") from None
    if data.size == 0:
        raise ApmError("no samples")
    return data, int(rate)


def warn_unvoiced(name: str, voiced: int, min_voiced: int, samples: np.ndarray) -> None:
    """Log that `name` has (almost) no voiced frames, so its answer rests on all its frames
    (as stage 5 does for such an utterance) and means little."""
    silent = " (digital silence: every sample is 0)" if not np.any(samples) else ""
    log.warning(
        "%s: no voiced frames (%d voiced, fewer than the %d needed)%s; the answer uses every "
        "frame and is unreliable: check that the input holds speech",
        name, voiced, min_voiced, silent,
    )  # fmt: skip


def to_mono_16k(data: np.ndarray, rate: int) -> np.ndarray:
    """float32 mono samples at 16 kHz: channels averaged, other rates resampled (polyphase)."""
    data = np.asarray(data, dtype=np.float32)
    mono = data.mean(axis=1) if data.ndim == 2 else data
    if rate != SAMPLE_RATE:
        g = math.gcd(rate, SAMPLE_RATE)
        mono = resample_poly(mono.astype(np.float64), SAMPLE_RATE // g, rate // g)
    return np.ascontiguousarray(mono, dtype=np.float32)


class LanguageIdentifier:
    """A loaded model package; see the module docstring."""

    def __init__(
        self, model_dir: str | os.PathLike, device: str = "cpu", backend: str = ""
    ) -> None:
        package = load_package(model_dir)
        self.model_dir = Path(model_dir)
        self.settings = package.settings
        self.languages = package.languages
        self.backend_name = backend or self.settings["primary"]
        if self.backend_name not in package.backend.models:
            raise ApmError(f"{model_dir}: no back-end '{self.backend_name}' in the package "
                           f"(it has {list(package.backend.models)})")  # fmt: skip
        self.backend = package.backend
        self.calibrated = self.backend_name in self.backend.calibration
        # whether the default threshold was ever checked on languages the model does not know
        self.threshold_checked = bool(
            self.settings.get("unknown_threshold_checked_on_unknown_languages", False)
        )
        if not self.threshold_checked:
            log.warning(
                "%s: the unknown-language threshold (%.4f) was never checked on languages the "
                "model does not know (no open-set dev set): speech of another language is "
                "likely answered with one of its %d languages (see MODEL.md)",
                model_dir, float(self.settings.get("unknown_threshold", 0.0)),
                len(self.languages),
            )  # fmt: skip
        self.device = pick_device(device, 0)  # a clear error for cuda without CUDA
        self.system = load_system(package.state, self.device)
        feats = self.settings["features"]
        self.feature_config = FeatureConfig(
            fbank=dict(feats["fbank"]), vad=VadConfig(**feats["vad"])
        )
        self.extractor = make_extractor(self.feature_config)
        self.unknown_threshold = float(self.settings.get("unknown_threshold", 0.0))
        self.batch_frames = BATCH_FRAMES.get(self.device.type, BATCH_FRAMES["cpu"])

    @classmethod
    def from_dir(
        cls, model_dir: str | os.PathLike, device: str = "cpu", backend: str = ""
    ) -> LanguageIdentifier:
        """Load the package in `model_dir` (`exp/<system>/model`)."""
        return cls(model_dir, device, backend)

    # -- the pipeline, step by step -----------------------------------------------------

    def load(self, audio, sample_rate: int | None = None) -> np.ndarray:
        """16 kHz mono float32 samples of a path, a `cmd |` pipe, or an array (then give
        `sample_rate`; [N] or [N, channels])."""
        if isinstance(audio, (str, os.PathLike)):
            data, rate = read_audio(audio)
        else:
            if sample_rate is None:
                raise ApmError("an array of samples needs its sample_rate")
            data, rate = np.asarray(audio, dtype=np.float32), int(sample_rate)
            try:
                check_finite(data)
            except AudioProblem as e:
                raise ApmError(f"{e.what}; pass finite samples") from None
        return to_mono_16k(data, rate)

    def features(self, samples: np.ndarray, name: str = "input") -> np.ndarray:
        """The network's input frames of 16 kHz samples: fbank, VAD-kept frames, CMN."""
        if num_frames(len(samples), SAMPLE_RATE) < MIN_FRAMES:
            raise ApmError(f"too short: {len(samples) / SAMPLE_RATE:.3f} s of audio, the model "
                           f"needs at least {MIN_FRAMES * 10} ms")  # fmt: skip
        feats, vad = fbank_and_vad(
            samples, SAMPLE_RATE, self.extractor, self.feature_config.vad, name
        )
        feats = as_stored(feats)  # as the recipe's stored features: the same scores as stage 6
        min_voiced = self.settings["extract"]["min_voiced_frames"]
        frames, unvoiced = normalize_voiced(feats, vad > 0.5, self.settings["cmn"], min_voiced)
        if unvoiced:
            warn_unvoiced(name, int((vad > 0.5).sum()), min_voiced, samples)
        return frames

    def embed_features(self, prepared: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(x-vector, network language outputs) of prepared frames, as stage 5."""
        return embed_batch(self.system, prepared, self.batch_frames)

    def decide(self, name: str, xvector: np.ndarray, logits: np.ndarray,
               unknown_threshold: float | None = None) -> Identification:  # fmt: skip
        inputs = xvector if self.backend.input(self.backend_name) == "xvector" else logits
        scores = self.backend.scores(self.backend_name, inputs[None])[0]
        post = self.backend.posteriors(self.backend_name, scores[None])[0]
        order = np.argsort(-post, kind="stable")
        threshold = self.unknown_threshold if unknown_threshold is None else unknown_threshold
        best = int(order[0])
        language = self.languages[best] if post[best] >= threshold else UNKNOWN
        return Identification(
            name=name,
            language=language,
            posterior=float(post[best]),
            posteriors={lang: float(p) for lang, p in zip(self.languages, post, strict=True)},
            scores=scores,
            embedding=xvector,
            top=[(self.languages[i], float(post[i])) for i in order],
        )

    # -- the API ------------------------------------------------------------------------

    def identify(self, audio, sample_rate: int | None = None,
                 unknown_threshold: float | None = None) -> Identification:  # fmt: skip
        """Language of one input (path, `cmd |` pipe, or samples with `sample_rate`)."""
        return self.identify_batch([audio], sample_rate, unknown_threshold)[0]

    def identify_batch(self, audios: list, sample_rate: int | None = None,
                       unknown_threshold: float | None = None) -> list[Identification]:  # fmt: skip
        """Languages of several inputs, embedded in batches; a bad input raises ApmError."""
        names = [os.fspath(a) if isinstance(a, (str, os.PathLike)) else f"array{i}"
                 for i, a in enumerate(audios)]  # fmt: skip
        prepared = [
            self.features(self.load(a, sample_rate), n) for a, n in zip(audios, names, strict=True)
        ]
        return [self.decide(n, x, s, unknown_threshold)
                for n, (x, s) in zip(names, self.embed_features(prepared), strict=True)]  # fmt: skip

    def embed(self, audio, sample_rate: int | None = None) -> np.ndarray:
        """The x-vector of one input (the layer `extract.layer` names, as stage 5 writes)."""
        samples = self.load(audio, sample_rate)
        return self.embed_features([self.features(samples)])[0][0]
