"""Kaldi-compatible fbank + energy VAD of one cut (lhotse's Fbank, dither 0).

Samples are scaled to the int16 range before analysis, as Kaldi reads wavs, so the values
match `compute-fbank-feats` and the VAD thresholds of Kaldi recipes apply. No mean
normalisation here: training and extraction apply CMN themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from lhotse import Features
from lhotse.cut import Cut
from lhotse.features.kaldi.extractors import Fbank, FbankConfig

from apm.features.vad import VadConfig, compute_vad
from apm.utils import FRAME_SHIFT, ApmError, num_frames
from apm.utils.config import check_bool, check_choice, check_int, check_number, load_yaml

INT16_SCALE = 32768.0
# Fbank options a user may set; the frame shift, edges and dither are fixed by the frame
# convention (apm.utils.frames) and by determinism.
FBANK_KEYS = {
    "num_mel_bins",
    "frame_length",
    "low_freq",
    "high_freq",
    "preemph_coeff",
    "window_type",
    "energy_floor",
    "remove_dc_offset",
    "round_to_power_of_two",
    "raw_energy",
}
WINDOW_TYPES = ("povey", "hanning", "hamming", "rectangular", "blackman")
MAX_FRAME_LENGTH = 0.1  # seconds; longer analysis windows are surely a unit mistake


@dataclass(frozen=True)
class FeatureConfig:
    fbank: dict = field(default_factory=lambda: {"num_mel_bins": 40})
    vad: VadConfig = VadConfig()
    cuts_per_job: int = 200

    def to_dict(self) -> dict:
        return {"fbank": self.fbank, "vad": vars(self.vad), "cuts_per_job": self.cuts_per_job}


# Stage 2 records the feature config of a set next to its features (data/fbank/<set>/), so a
# later stage that recomputes fbank (on-the-fly augmentation) uses exactly the same one.
STORED_CONFIG = "feature_config.yaml"


def stored_feature_config(fbank_dir: str | os.PathLike) -> FeatureConfig:
    """The feature config stage 2 used for `fbank_dir`."""
    path = Path(fbank_dir) / STORED_CONFIG
    if not path.is_file():
        raise ApmError(f"{path}: not found; rerun stage 2 for this set (--force true) so that it "
                       "records its feature config")  # fmt: skip
    return load_feature_config(path)


def load_feature_config(path: str | os.PathLike | None) -> FeatureConfig:
    """Read the stage-2 YAML (see egs/olr/conf/fbank.yaml); None gives the defaults."""
    if path is None:
        return FeatureConfig()
    raw = load_yaml(path, "feature config")
    unknown = set(raw) - {"fbank", "vad", "cuts_per_job"}
    unknown |= {f"fbank.{k}" for k in set(raw.get("fbank") or {}) - FBANK_KEYS}
    unknown |= {f"vad.{k}" for k in set(raw.get("vad") or {}) - set(vars(VadConfig()))}
    if unknown:
        raise ApmError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; valid: fbank.{{"
            f"{', '.join(sorted(FBANK_KEYS))}}}, vad.{{{', '.join(vars(VadConfig()))}}}, cuts_per_job"
        )
    where = str(path)
    fbank = _check_fbank({"num_mel_bins": 40, **(raw.get("fbank") or {})}, where)
    vad = {**vars(VadConfig()), **(raw.get("vad") or {})}
    for key in ("energy_threshold", "energy_mean_scale", "proportion_threshold"):
        vad[key] = _number(vad[key], key, "vad", where, minimum=None)
    if not vad["energy_mean_scale"] >= 0 or not 0 <= vad["proportion_threshold"] <= 1:
        raise ApmError(
            f"{where}: vad.energy_mean_scale must be >= 0 and vad.proportion_threshold in [0, 1]"
        )
    vad["frames_context"] = check_int(vad["frames_context"], "frames_context", "vad", path=where)
    cuts_per_job = check_int(
        raw.get("cuts_per_job", 200), "cuts_per_job", "", minimum=1, path=where
    )
    return FeatureConfig(fbank=fbank, vad=VadConfig(**vad), cuts_per_job=cuts_per_job)


def _number(value, key: str, section: str, where: str, **bounds) -> float:
    """check_number, keeping a number's own type (20 stays 20) so feature records of existing
    configs do not change; numeric strings ("2e-3") become floats."""
    out = check_number(value, key, section, path=where, **bounds)
    return value if isinstance(value, (int, float)) else out


def _check_fbank(fbank: dict, where: str) -> dict:
    """Typed and range-checked fbank options (Kaldi's names; times in seconds, not ms)."""
    fbank["num_mel_bins"] = check_int(
        fbank["num_mel_bins"], "num_mel_bins", "fbank", minimum=1, path=where
    )
    if "frame_length" in fbank:
        value = fbank["frame_length"]
        ms = isinstance(value, (int, float)) and value > 1
        fbank["frame_length"] = _number(
            value, "frame_length", "fbank", where, minimum=FRAME_SHIFT, maximum=MAX_FRAME_LENGTH,
            hint=f"frame_length is in seconds (0.025), got {value!r}"
            + (f" (Kaldi's unit is ms: {value} ms is {value / 1000:g})" if ms else ""),
        )  # fmt: skip
    for key, minimum, maximum in (("low_freq", 0.0, None), ("preemph_coeff", 0.0, 1.0)):
        if key in fbank:
            fbank[key] = _number(fbank[key], key, "fbank", where, minimum=minimum, maximum=maximum)
    if "high_freq" in fbank:
        fbank["high_freq"] = _number(
            fbank["high_freq"], "high_freq", "fbank", where, minimum=None,
            hint="in Hz; <= 0 is an offset from the Nyquist frequency",
        )  # fmt: skip
    if "energy_floor" in fbank:
        fbank["energy_floor"] = _number(fbank["energy_floor"], "energy_floor", "fbank", where)
    for key in ("remove_dc_offset", "round_to_power_of_two", "raw_energy"):
        if key in fbank:
            check_bool(fbank[key], key, "fbank", path=where)
    if "window_type" in fbank:
        check_choice(fbank["window_type"], WINDOW_TYPES, "window_type", "fbank", path=where)
    return fbank


def make_extractor(cfg: FeatureConfig) -> Fbank:
    """lhotse Fbank with Kaldi's raw log energy prepended as column 0 (used by the VAD)."""
    opts = dict(cfg.fbank)
    return Fbank(
        FbankConfig(
            num_filters=opts.pop("num_mel_bins"),
            frame_shift=FRAME_SHIFT,
            dither=0.0,
            snip_edges=False,
            use_energy=True,
            **opts,
        )
    )


# The feature store (stage 2, lhotse's LilcomChunkyWriter) keeps fbank values rounded to
# multiples of 2^STORE_TICK_POWER, exactly (lilcom's precision setting; lhotse's default).
STORE_TICK_POWER = -5


def as_stored(feats: np.ndarray) -> np.ndarray:
    """fbank as the store gives it back: what training saw, so features computed later from
    audio (inference, augmentation) equal stored ones. The store's own codec, chunk by chunk:
    lilcom's quantisation is not plain rounding (ties, short chunks)."""
    import lilcom
    from lhotse.features.compression import lilcom_compress_chunked
    from lhotse.features.io import LilcomChunkyWriter

    chunks = lilcom_compress_chunked(np.array(feats, dtype=np.float32), STORE_TICK_POWER,
                                     chunk_size=LilcomChunkyWriter.CHUNK_SIZE)  # fmt: skip
    return np.concatenate([lilcom.decompress(c) for c in chunks]).astype(np.float32)


def fbank_and_vad(
    samples: np.ndarray, sampling_rate: int, extractor: Fbank, vad: VadConfig, utt: str
) -> tuple[np.ndarray, np.ndarray]:
    """(fbank float32 [frames, bins], vad float32 [frames]) of mono float samples in [-1, 1]."""
    out = extractor.extract(np.asarray(samples, dtype=np.float32) * INT16_SCALE, sampling_rate)
    expected = num_frames(len(samples), sampling_rate)
    if out.shape[0] != expected:
        raise ApmError(
            f"utterance {utt}: fbank gave {out.shape[0]} frames for {len(samples)} samples, "
            f"the frame convention says {expected}; the feature config must keep a 10 ms "
            "shift and unsnipped edges"
        )
    return np.ascontiguousarray(out[:, 1:], dtype=np.float32), compute_vad(out[:, 0], vad)


def features_manifest(
    cut: Cut, feats: np.ndarray, storage_type: str, storage_path: str, key: str
) -> Features:
    """The lhotse Features entry of `feats` computed over the whole of `cut`."""
    return Features(
        type=Fbank.name,
        num_frames=feats.shape[0],
        num_features=feats.shape[1],
        frame_shift=FRAME_SHIFT,
        sampling_rate=cut.sampling_rate,
        start=cut.start,
        duration=cut.duration,
        storage_type=storage_type,
        storage_path=storage_path,
        storage_key=key,
        recording_id=cut.recording_id,
        channels=cut.channel,
    )
