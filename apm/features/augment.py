"""On-the-fly additive noise and reverberation of training cuts (Kaldi/ASV-Subtools style).

The `augment:` section of a system config (conf/<system>.yaml), off by default:

    augment:
      prob: 0.6                  # chance that a training chunk is augmented
      reverb_prob: 0.25          # of augmented cuts: reverberation instead of additive noise
      rirs: data/augment/rirs.jsonl.gz           # RIR recordings (steps/prepare_augment.sh)
      noise:  {manifest: data/augment/noise.jsonl.gz,  snr: [0, 15]}
      music:  {manifest: data/augment/music.jsonl.gz,  snr: [5, 15]}
      babble: {manifest: data/augment/babble.jsonl.gz, snr: [13, 20], speakers: [3, 7]}

Every augmented cut gets exactly one effect, as the copies of Kaldi's x-vector recipe (reverb,
noise, music, babble) and WeSpeaker's on-the-fly choice: reverberation with `reverb_prob`, else
one of the noise kinds that name a manifest, drawn in proportion to their `weight`. SNRs are in
dB and drawn uniformly from each kind's range; babble sums `speakers` (drawn from the inclusive
range) MUSAN speech recordings, each at its own SNR as Kaldi's background noises are.

`Augmenter(cfg, feature_config, seed)` is a callable `(cut, epoch) -> float32 [frames, bins]`:
the fbank of the augmented audio of a stage-2 feature cut (which keeps its recording), with the
stored features' frame count so the clean audio's VAD and phone alignments still apply. The
draw depends only on (seed, epoch, cut id), so it is the same in every process and worker.
A cut left clean reads its stored features. `plan(cut, epoch)` says what a cut gets;
`draw_plan(cut, rng)` draws it from any generator: training draws one per chunk, keyed by
(seed, epoch, batch, row), on every data path (`apm.train.batches.ChunkBatches`). Noise is
added as Kaldi's wav-reverberate does (a random span of the source, repeated when shorter than
the cut, scaled once so its energy over the cut gives the SNR against the whole clean cut);
reverberation is lhotse's `ReverbWithImpulseResponse`, which aligns the RIR's direct path (its
peak) with the input so frames do not shift, and keeps the input's power.
"""

from __future__ import annotations

import functools
import logging
import os
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from lhotse import Recording, RecordingSet
from lhotse.augmentation import ReverbWithImpulseResponse
from lhotse.cut import Cut

from apm.features.fbank import FeatureConfig, as_stored, fbank_and_vad, make_extractor
from apm.features.readers import load_cut_features
from apm.utils import ApmError
from apm.utils.config import check_int, check_number, load_yaml, reject_unknown

log = logging.getLogger(__name__)

KINDS = ("noise", "music", "babble")
# Kaldi's x-vector recipe / ASV-Subtools: noise 0-15 dB, music 5-15 dB, babble 13-20 dB per
# speaker with 3-7 speakers.
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "noise": {"manifest": None, "snr": [0, 15], "weight": 1.0},
    "music": {"manifest": None, "snr": [5, 15], "weight": 1.0},
    "babble": {"manifest": None, "snr": [13, 20], "weight": 1.0, "speakers": [3, 7]},
}
AUGMENT_DEFAULTS: dict[str, Any] = {
    "prob": 0.0,
    "reverb_prob": 0.25,
    "rirs": None,
    **{kind: dict(defaults) for kind, defaults in KIND_DEFAULTS.items()},
}
# Names steps/prepare_augment.sh writes in its output directory.
SET_FILES = {"noise": "noise", "music": "music", "babble": "babble", "rirs": "rirs"}
MANIFEST_SUFFIX = ".jsonl.gz"


@dataclass(frozen=True)
class NoiseKind:
    name: str
    manifest: str | None
    snr: tuple[float, float]
    weight: float = 1.0
    speakers: tuple[int, int] = (1, 1)


@dataclass(frozen=True)
class AugmentConfig:
    prob: float = 0.0
    reverb_prob: float = 0.25
    rirs: str | None = None
    kinds: tuple[NoiseKind, ...] = field(
        default_factory=lambda: tuple(_kind(k, KIND_DEFAULTS[k], "") for k in KINDS)
    )

    @property
    def enabled(self) -> bool:
        return self.prob > 0

    @property
    def active_kinds(self) -> tuple[NoiseKind, ...]:
        return tuple(k for k in self.kinds if k.manifest is not None and k.weight > 0)

    def to_dict(self) -> dict[str, Any]:
        """The resolved section, as exp/<system>/config.yaml records it."""
        out: dict[str, Any] = {"prob": self.prob, "reverb_prob": self.reverb_prob}
        out["rirs"] = self.rirs
        for k in self.kinds:
            out[k.name] = {"manifest": k.manifest, "snr": list(k.snr), "weight": k.weight}
            if k.name == "babble":
                out[k.name]["speakers"] = list(k.speakers)
        return out


def _pair(value: Any, key: str, section: str, where: str, *, integer: bool) -> tuple:
    """A [low, high] range with low <= high (integers >= 1 for counts)."""
    name = f"{section}.{key}"
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ApmError(f"{where}: '{name}' is {value!r}; it must be a range [low, high]")
    if integer:
        low, high = (check_int(v, key, section, minimum=1, path=where) for v in value)
    else:
        low, high = (check_number(v, key, section, minimum=None, path=where) for v in value)
    if low > high:
        raise ApmError(f"{where}: '{name}' is {list(value)}; low must not exceed high")
    return low, high


def _manifest(value: Any, key: str, where: str) -> str | None:
    if value is not None and not (isinstance(value, str) and value):
        raise ApmError(f"{where}: '{key}' is {value!r}; it must be a manifest path or null")
    return value


def _kind(name: str, raw: Any, where: str) -> NoiseKind:
    section = f"augment.{name}"
    if not isinstance(raw, Mapping):
        raise ApmError(
            f"{where}: '{section}' must be a mapping with keys {sorted(KIND_DEFAULTS[name])}"
        )
    reject_unknown(raw, KIND_DEFAULTS[name], f"{where}: {section}")
    cfg = {**KIND_DEFAULTS[name], **raw}
    speakers = (
        _pair(cfg["speakers"], "speakers", section, where, integer=True)
        if "speakers" in cfg
        else (1, 1)
    )
    return NoiseKind(
        name=name,
        manifest=_manifest(cfg["manifest"], f"{section}.manifest", where),
        snr=_pair(cfg["snr"], "snr", section, where, integer=False),
        weight=check_number(cfg["weight"], "weight", section, path=where),
        speakers=speakers,
    )


def resolve_augment(raw: Mapping[str, Any] | None, where: str = "system config") -> AugmentConfig:
    """The validated `augment:` section (None or {}: off). Errors name `where`, the key and
    the allowed values."""
    if raw is None:
        return AugmentConfig()
    if not isinstance(raw, Mapping):
        raise ApmError(f"{where}: 'augment' must be a mapping with keys {sorted(AUGMENT_DEFAULTS)}")
    reject_unknown(raw, AUGMENT_DEFAULTS, f"{where}: augment")
    cfg = {**AUGMENT_DEFAULTS, **raw}
    out = AugmentConfig(
        prob=check_number(cfg["prob"], "prob", "augment", maximum=1.0, path=where),
        reverb_prob=check_number(
            cfg["reverb_prob"], "reverb_prob", "augment", maximum=1.0, path=where
        ),
        rirs=_manifest(cfg["rirs"], "augment.rirs", where),
        kinds=tuple(_kind(k, cfg[k], where) for k in KINDS),
    )
    if out.enabled:
        if out.reverb_prob > 0 and out.rirs is None:
            raise ApmError(
                f"{where}: 'augment.reverb_prob' is {out.reverb_prob:g} but 'augment.rirs' is "
                "null; name the RIR manifest (steps/prepare_augment.sh) or set reverb_prob: 0"
            )
        if out.reverb_prob < 1 and not out.active_kinds:
            raise ApmError(
                f"{where}: augment.prob is {out.prob:g} but none of the noise kinds "
                f"{', '.join(KINDS)} names a manifest (augment.<kind>.manifest) with a weight "
                "> 0; name one or set reverb_prob: 1"
            )
    return out


def load_augment_config(path: str | os.PathLike) -> AugmentConfig:
    """The `augment:` section of a system YAML (other sections are not looked at here)."""
    return resolve_augment(load_yaml(path, "system config").get("augment"), str(path))


def read_recordings(path: str | os.PathLike, what: str) -> dict[str, Recording]:
    """A recordings manifest as {id: recording}, sorted by id (the draw must not depend on
    the file's order)."""
    path = Path(path)
    if not path.is_file():
        raise ApmError(
            f"{path}: {what} manifest not found; write it with steps/prepare_augment.sh or fix "
            "the path in the augment section of the system config"
        )
    try:
        recs = sorted(RecordingSet.from_file(path), key=lambda r: r.id)
    except Exception as e:  # lhotse raises many types for a bad manifest
        raise ApmError(f"{path}: not a lhotse recordings manifest ({e})") from None
    if not recs:
        raise ApmError(f"{path}: {what} manifest holds no recordings")
    return {r.id: r for r in recs}


def cut_rng(seed: int, epoch: int, cut_id: str) -> np.random.Generator:
    """The generator of one cut in one epoch: the same in any process, worker or order."""
    return np.random.default_rng([seed, epoch, zlib.crc32(cut_id.encode("utf-8"))])


@dataclass(frozen=True)
class Plan:
    """What one cut gets in one epoch: reverberation with RIR `rir`, or additive noise of
    `kind` from `sources`, each (recording id, start in seconds, SNR in dB)."""

    kind: str
    rir: str | None = None
    sources: tuple[tuple[str, float, float], ...] = ()


def _mono(rec: Recording, sampling_rate: int) -> Recording:
    return rec.resample(sampling_rate) if rec.sampling_rate != sampling_rate else rec


def _span(rec: Recording, start: float, num_samples: int) -> np.ndarray:
    """`num_samples` samples of the first channel from `start` on, repeated from the
    beginning when the recording ends (Kaldi's wav-reverberate repeats short noises)."""
    if start + num_samples / rec.sampling_rate <= rec.duration:
        x = rec.load_audio(channels=rec.channel_ids[0], offset=start)[0]
        if len(x) >= num_samples:  # a partial read: long MUSAN music is not loaded whole
            return x[:num_samples]
    x = rec.load_audio(channels=rec.channel_ids[0])[0]
    first = min(round(start * rec.sampling_rate), len(x) - 1)
    return x[(first + np.arange(num_samples)) % len(x)]


class Augmenter:
    """Augmented fbank of training cuts; see the module docstring."""

    def __init__(self, cfg: AugmentConfig, features: FeatureConfig, seed: int) -> None:
        self.cfg, self.features, self.seed = cfg, features, int(seed)
        self.extractor = make_extractor(features)
        self.sets: dict[str, dict[str, Recording]] = {}
        if not cfg.enabled:
            return
        for kind in cfg.active_kinds:
            self.sets[kind.name] = read_recordings(kind.manifest, f"augment.{kind.name}")
        if cfg.reverb_prob > 0:
            self.sets["rirs"] = read_recordings(cfg.rirs, "augment.rirs")

    def __call__(self, cut: Cut, epoch: int = 0) -> np.ndarray:
        """float32 [frames, bins]: augmented fbank, or the stored features of a clean draw."""
        plan = self.plan(cut, epoch)
        if plan is None:
            return load_cut_features(cut)
        return self.fbank(cut, self.audio(cut, plan))

    def for_epoch(self, epoch: int) -> Callable[[Cut], np.ndarray]:
        """The `(cut) -> features` callable of one epoch (picklable for DataLoader workers)."""
        return functools.partial(self, epoch=epoch)

    def plan(self, cut: Cut, epoch: int) -> Plan | None:
        """What `cut` gets in `epoch`, or None when it stays clean."""
        return self.draw_plan(cut, cut_rng(self.seed, epoch, cut.id))

    def draw_plan(self, cut: Cut, rng: np.random.Generator) -> Plan | None:
        """What `cut` gets, drawn with `rng` (training draws one per chunk, keyed by seed,
        epoch, batch and row: `apm.train.batches.ChunkBatches`), or None when it stays clean."""
        if not self.cfg.enabled or rng.uniform() >= self.cfg.prob:
            return None
        if self.cfg.reverb_prob > 0 and rng.uniform() < self.cfg.reverb_prob:
            rirs = list(self.sets["rirs"])
            return Plan("reverb", rir=rirs[rng.integers(len(rirs))])
        kinds = self.cfg.active_kinds
        weights = np.array([k.weight for k in kinds])
        kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        pool = list(self.sets[kind.name].values())
        count = int(rng.integers(kind.speakers[0], kind.speakers[1] + 1))
        sources = []
        for index in rng.choice(len(pool), size=count, replace=count > len(pool)):
            rec = pool[index]
            start = float(rng.uniform(0, max(rec.duration - cut.duration, 0.0)))
            sources.append((rec.id, start, float(rng.uniform(*kind.snr))))
        return Plan(kind.name, sources=tuple(sources))

    def clean_audio(self, cut: Cut) -> np.ndarray:
        if not cut.has_recording:
            raise ApmError(
                f"cut {cut.id}: no recording to augment; augmentation needs the stage-2 cuts "
                "(data/fbank/<set>/cuts.jsonl.gz), which keep their audio"
            )
        return np.asarray(cut.load_audio(), dtype=np.float32)[0]

    def noises(self, cut: Cut, plan: Plan, clean: np.ndarray) -> list[np.ndarray]:
        """The noise of each source of `plan`, scaled once over the cut's span so that its
        energy is the clean cut's divided by 10^(SNR/10) (Kaldi's wav-reverberate)."""
        reference = float(np.mean(np.square(clean, dtype=np.float64)))
        out = []
        for rec_id, start, snr in plan.sources:
            rec = _mono(self.sets[plan.kind][rec_id], cut.sampling_rate)
            noise = _span(rec, start, len(clean)).astype(np.float64)
            power = float(np.mean(noise**2))
            if power <= 0:
                raise ApmError(
                    f"augment.{plan.kind}: recording {rec_id} is silent from {start:.2f} s on "
                    f"({rec.sources[0].source}); remove it from the noise manifest"
                )
            out.append((noise * np.sqrt(reference / power / 10 ** (snr / 10))).astype(np.float32))
        return out

    def audio(self, cut: Cut, plan: Plan) -> np.ndarray:
        """Mono float32 samples of `cut` augmented as `plan` says, as many as the clean ones."""
        clean = self.clean_audio(cut)
        if plan.kind != "reverb":
            return clean + np.sum(self.noises(cut, plan, clean), axis=0, dtype=np.float32)
        rir = _mono(self.sets["rirs"][plan.rir], cut.sampling_rate)
        # lhotse's (Kaldi's) reverb: aligned on the RIR's peak, the input's power kept
        reverb = ReverbWithImpulseResponse(rir=rir, rir_channels=[0])
        return reverb(clean[None], cut.sampling_rate)[0].astype(np.float32)

    def fbank(self, cut: Cut, samples: np.ndarray) -> np.ndarray:
        """fbank of `samples`, checked against the stored features' shape (frames, bins)."""
        feats, _ = fbank_and_vad(
            samples, cut.sampling_rate, self.extractor, self.features.vad, cut.id
        )
        if cut.has_features and feats.shape != (cut.features.num_frames, cut.num_features):
            raise ApmError(
                f"cut {cut.id}: augmented fbank is {feats.shape[0]} x {feats.shape[1]}, the "
                f"stored features {cut.features.num_frames} x {cut.num_features}; give the "
                "feature config (conf/fbank.yaml) that stage 2 used"
            )
        return as_stored(feats)  # the precision of the clean cuts' stored features


# ---------------------------------------------------------------- importing real noise sets


def _root(path: str | os.PathLike, what: str) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise ApmError(f"{root}: {what} root not found; give the directory the archive unpacks to")
    return root


def _wavs(directory: Path, what: str) -> None:
    if not directory.is_dir():
        raise ApmError(f"{directory}: not found; {what}")
    if next(directory.rglob("*.wav"), None) is None:
        raise ApmError(f"{directory}: no .wav files; {what}")


def _scan(files: list[tuple[Path, str]], where: str, skip_bad: bool) -> list[Recording]:
    """Recordings of (wav file, recording id) pairs, each opened and checked first (decodes,
    finite samples: apm.data.audio.open_audio); bad files stop it with one error naming them,
    or with `skip_bad` are logged, counted and left out."""
    from apm.data.audio import AudioProblem, open_audio
    from apm.data.problems import Problem, settle

    good, problems = [], []
    for path, rec_id in files:
        try:
            open_audio(str(path))
        except AudioProblem as e:
            problems.append(Problem(rec_id, str(path), e.what, e.fix))
            continue
        good.append(Recording.from_file(path, recording_id=rec_id))
    skipped = settle(problems, skip_bad, where)
    if skipped:
        log.warning("%s: %d bad file(s) skipped, %d kept", where, len(skipped), len(good))
    return good


def prepare_augment_sets(
    out: str | os.PathLike,
    musan: str | os.PathLike | None = None,
    rirs_noises: str | os.PathLike | None = None,
    rir_parts: tuple[str, ...] = ("sim_rir",),
    skip_bad: bool = False,
) -> dict[str, Path]:
    """Recordings manifests `<out>/{noise,music,babble,rirs}.jsonl.gz` from a MUSAN root
    (noise/, music/, speech/: babble) and/or an RIRS_NOISES root (`rir_parts`, as lhotse's
    musan and rir_noise recipes name them: sim_rir, real_rir; the same recording ids).
    Every file is opened and checked; a bad one (unreadable, NaN/infinite samples) stops it,
    or with `skip_bad` is left out and counted. Returns {set: path} of what it wrote."""
    from lhotse.recipes.rir_noise import PARTS

    if musan is None and rirs_noises is None:
        raise ApmError("give a MUSAN root (--musan) and/or an RIRS_NOISES root (--rirs-noises)")
    sets: dict[str, list[Recording]] = {}
    if musan is not None:
        root = _root(musan, "MUSAN (--musan)")
        for part in ("noise", "music", "speech"):
            _wavs(root / part, "a MUSAN root (openslr.org/17) holds noise/, music/ and speech/")
        for name, part in (("noise", "noise"), ("music", "music"), ("babble", "speech")):
            files = [(f, f.stem) for f in sorted((root / part).rglob("*.wav"))]
            sets[name] = _scan(files, f"MUSAN {part}/ under {root}", skip_bad)
    if rirs_noises is not None:
        root = _root(rirs_noises, "RIRS_NOISES (--rirs-noises)")
        rirs: list[Recording] = []
        for part in rir_parts:
            if part not in ("sim_rir", "real_rir"):
                raise ApmError(f"RIR part '{part}': choose sim_rir and/or real_rir")
            audio_dir = root / PARTS[part]
            _wavs(audio_dir, "an RIRS_NOISES root (openslr.org/28) is needed")
            if part == "sim_rir":  # the rooms share file names: ids <room>-<stem>, as lhotse's
                files = [(f, f"{room}-{f.stem}") for room in ("small", "medium", "large")
                         for f in sorted((audio_dir / f"{room}room").rglob("*.wav"))]  # fmt: skip
            else:
                files = [(f, f.stem) for f in sorted(audio_dir.rglob("*.wav")) if "rir" in f.stem]
            rirs += _scan(files, f"RIRS_NOISES {part} under {root}", skip_bad)
        if not rirs:
            raise ApmError(f"{root}: no RIR recordings in parts {', '.join(rir_parts)}")
        sets["rirs"] = rirs
    for name, recs in sets.items():
        if not recs:
            raise ApmError(f"{out}: no usable {name} recordings left (every file was bad)")
    from apm.data.manifests import write_manifest

    written = {}
    for name, recs in sets.items():
        path = Path(out) / f"{SET_FILES[name]}{MANIFEST_SUFFIX}"
        write_manifest(path, sorted(recs, key=lambda r: r.id))
        log.info("%s: %d recordings, %.1f min", path, len(recs), sum(r.duration for r in recs) / 60)
        written[name] = path
    return written


# ------------------------------------------- synthetic sets in the real layouts (tests, bench)


def write_toy_sets(root: str | os.PathLike, seed: int = 0, rate: int = 16000) -> tuple[Path, Path]:
    """A tiny MUSAN (`<root>/musan`) and RIRS_NOISES (`<root>/RIRS_NOISES`) in the layouts
    lhotse's recipes parse: white/brown noise, music-like chords, babble "speakers" (harmonic
    syllables at different pitches) and exponentially decaying RIRs with a delayed direct path.
    Returns (musan root, RIRS_NOISES root)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    musan, rirs = root / "musan", root / "RIRS_NOISES"
    t = np.arange(int(2.5 * rate)) / rate
    files: dict[str, np.ndarray] = {
        "noise/free-sound/noise-white.wav": rng.normal(0, 0.1, len(t)),
        "noise/free-sound/noise-brown.wav": np.cumsum(rng.normal(0, 0.01, len(t) // 2)),
    }
    for i, root_hz in enumerate((220.0, 330.0)):
        chord = sum(np.sin(2 * np.pi * root_hz * r * t) for r in (1, 1.25, 1.5))
        files[f"music/fma/music-fma-{i:04d}.wav"] = 0.1 * chord * (1 + 0.5 * np.sin(3 * t))
    for i, f0 in enumerate((110.0, 150.0, 190.0, 230.0)):
        syll = (np.sin(2 * np.pi * 4 * t + i) > 0).astype(float)  # 4 syllables per second
        voice = sum(
            np.sin(2 * np.pi * k * f0 * (1 + 0.05 * np.sin(t + i)) * t) / k for k in range(1, 8)
        )
        files[f"speech/librivox/speech-librivox-{i:04d}.wav"] = 0.1 * voice * syll
    for i, (room, t60) in enumerate((("smallroom", 0.2), ("mediumroom", 0.5), ("largeroom", 0.8))):
        n = int(t60 * rate)
        rir = rng.normal(0, 0.3, n) * np.exp(-6.9 * np.arange(n) / n)  # -60 dB at t60
        delay = int(rng.integers(40, 120))
        rir[:delay] = 0.0
        rir[delay] = 1.0  # the direct path dominates
        files[f"RIRS/simulated_rirs/{room}/Room{i + 1:03d}/Room{i + 1:03d}-00001.wav"] = rir
    files["RIRS/real_rirs_isotropic_noises/RVB2014_type1_rir_largeroom1_near_angla.wav"] = files[
        "RIRS/simulated_rirs/largeroom/Room003/Room003-00001.wav"
    ]
    for name, x in files.items():
        path = rirs / name[len("RIRS/") :] if name.startswith("RIRS/") else musan / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (x / max(1.0, np.abs(x).max() / 0.9)).astype(np.float32), rate)
    (musan / "music/fma/ANNOTATIONS").write_text(
        "".join(f"music-fma-{i:04d} classical N synth{i}\n" for i in range(2))
    )
    return musan, rirs
