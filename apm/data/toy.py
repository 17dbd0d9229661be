"""A tiny OLR-layout corpus of tone bursts in noise, for tests and benchmarks.

Each utterance is silence, a few harmonic bursts (the language sets the pitch) separated by
pauses, and silence again, so fbank and VAD have structure to find. Layout as an OLR release:
`<root>/<set>/{wav.scp,utt2spk,spk2utt,utt2lang[,trials]}` with wavs under `<root>/wav/`
referenced by paths relative to the root.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from apm.data.trials import Trial, write_trials
from apm.utils import write_kv

RATE = 16000
LANGUAGES = {"zh-cn": 140.0, "ru-ru": 190.0, "ja-jp": 240.0}  # language -> burst pitch (Hz)


def toy_utterance(rng: np.random.Generator, pitch: float, seconds: float) -> np.ndarray:
    """Mono float32 audio: 0.3 s quiet noise, bursts of harmonics with pauses, 0.3 s quiet."""
    n = int(seconds * RATE)
    x = rng.normal(0, 1e-3, n)
    t = np.arange(n) / RATE
    pos = int(0.3 * RATE)
    while pos < n - int(0.5 * RATE):
        length = int(rng.uniform(0.15, 0.4) * RATE)
        seg = slice(pos, min(pos + length, n - int(0.3 * RATE)))
        f0 = pitch * rng.uniform(0.9, 1.1)
        burst = sum(np.sin(2 * np.pi * k * f0 * t[seg]) / k for k in range(1, 6))
        x[seg] += 0.3 * burst * np.hanning(seg.stop - seg.start)
        pos = seg.stop + int(rng.uniform(0.1, 0.3) * RATE)
    return x.astype(np.float32)


def make_toy_corpus(
    root: str | os.PathLike,
    sets: dict[str, int] | None = None,
    speakers_per_set: int = 2,
    seconds: tuple[float, float] = (1.5, 3.0),
    seed: int = 0,
) -> Path:
    """Write the corpus: `sets` maps set name -> utterances per (speaker, language).

    The first set is the training set; every other set gets OLR trials (each utterance
    against each language). Returns `root`.
    """
    root = Path(root)
    sets = sets or {"train": 2, "test": 1}
    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    for index, (name, per_pair) in enumerate(sets.items()):
        wav, utt2spk, utt2lang = {}, {}, {}
        for s in range(speakers_per_set):
            spk = f"{name}-spk{s}"
            for lang, pitch in LANGUAGES.items():
                for k in range(per_pair):
                    utt = f"{spk}-{lang}-{k:03d}"
                    sf.write(
                        root / "wav" / f"{utt}.wav",
                        toy_utterance(rng, pitch, rng.uniform(*seconds)),
                        RATE,
                        subtype="PCM_16",
                    )
                    wav[utt], utt2spk[utt], utt2lang[utt] = f"wav/{utt}.wav", spk, lang
        d = root / name
        write_kv(d / "wav.scp", wav)
        write_kv(d / "utt2spk", utt2spk)
        write_kv(d / "utt2lang", utt2lang)
        spk2utt = {}
        for utt in sorted(utt2spk):
            spk2utt.setdefault(utt2spk[utt], []).append(utt)
        write_kv(d / "spk2utt", {spk: " ".join(u) for spk, u in spk2utt.items()})
        if index > 0:
            write_trials(
                d / "trials",
                [
                    Trial(lang, utt, utt2lang[utt] == lang)
                    for utt in sorted(utt2lang)
                    for lang in LANGUAGES
                ],
            )
    return root
