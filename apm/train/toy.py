"""A small synthetic feature set in the layout of stages 2 and 3, for tests and benchmarks.

Each language prefers its own phones; each phone has its own feature prototype; phones last
5-15 frames; the first and last frames of an utterance are low-energy non-speech marked 0 by
the VAD. Languages are thus separable from the phone statistics, which a few training steps
start to learn, and every stage-4/5 code path (VAD, alignments, lhotse storage) is exercised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lhotse import CutSet, Features, MonoCut, SupervisionSegment
from lhotse.features.io import NumpyFilesWriter

from apm.utils.arkio import write_ark_scp
from apm.utils.frames import FRAME_SHIFT

SILENCE_FRAMES = 10  # non-speech frames at each end of an utterance


@dataclass(frozen=True)
class ToyCorpus:
    fbank_dir: Path  # cuts.jsonl.gz, vad.scp
    ali_dir: Path  # ali.scp, phones.txt
    languages: list[str]


def _phone_sequence(rng: np.random.Generator, prefs: np.ndarray, frames: int) -> np.ndarray:
    labels = []
    while sum(len(seg) for seg in labels) < frames:
        labels.append(np.full(rng.integers(5, 16), rng.choice(len(prefs), p=prefs)))
    return np.concatenate(labels)[:frames].astype(np.int32)


def make_toy_corpus(
    out_dir: str | os.PathLike,
    *,
    num_langs: int = 3,
    utts_per_lang: int = 8,
    frames: tuple[int, int] = (150, 400),
    feat_dim: int = 20,
    num_phones: int = 12,
    seed: int = 0,
    ids_suffix: str = "",
) -> ToyCorpus:
    """Write `num_langs * utts_per_lang` utterances under `out_dir`/{fbank,ali}.

    `ids_suffix` is appended to every cut id (e.g. `_sp1.1` to mimic speed-perturbed copies).
    """
    out = Path(out_dir)
    fbank_dir, ali_dir = out / "fbank", out / "ali"
    fbank_dir.mkdir(parents=True, exist_ok=True)
    ali_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(0.0, 1.0, size=(num_phones, feat_dim)).astype(np.float32)
    languages = [f"l{i}" for i in range(num_langs)]
    cuts, vads, alis = [], {}, {}
    with NumpyFilesWriter(fbank_dir / "storage") as writer:
        for lang in languages:
            prefs = rng.dirichlet(np.full(num_phones, 0.3))
            for u in range(utts_per_lang):
                cut_id = f"{lang}_u{u:03d}{ids_suffix}"
                total = int(rng.integers(frames[0], frames[1] + 1))
                phones = _phone_sequence(rng, prefs, total)
                x = prototypes[phones] + rng.normal(0, 0.7, size=(total, feat_dim))
                x = (x + 5.0).astype(np.float32)
                vad = np.ones(total, dtype=np.float32)
                vad[:SILENCE_FRAMES] = vad[-SILENCE_FRAMES:] = 0.0
                x[vad == 0] = rng.normal(0, 0.1, size=(int((vad == 0).sum()), feat_dim))
                cuts.append(_cut(cut_id, lang, x, writer))
                vads[cut_id], alis[cut_id] = vad, phones
    CutSet.from_cuts(cuts).to_file(fbank_dir / "cuts.jsonl.gz")
    write_ark_scp(vads, fbank_dir / "vad.ark")
    write_ark_scp(alis, ali_dir / "ali.ark", dtype=np.int32)
    (ali_dir / "phones.txt").write_text(
        "".join(f"p{i} {i}\n" for i in range(num_phones)), encoding="utf-8"
    )
    return ToyCorpus(fbank_dir, ali_dir, languages)


def _cut(cut_id: str, lang: str, feats: np.ndarray, writer: NumpyFilesWriter) -> MonoCut:
    duration = round(len(feats) * FRAME_SHIFT, 4)
    key = writer.write(cut_id, feats)
    features = Features(
        type="fbank",
        num_frames=len(feats),
        num_features=feats.shape[1],
        frame_shift=FRAME_SHIFT,
        sampling_rate=16000,
        start=0.0,
        duration=duration,
        storage_type=writer.name,
        storage_path=str(writer.storage_path),
        storage_key=key,
        recording_id=cut_id,
    )
    sup = SupervisionSegment(
        id=cut_id,
        recording_id=cut_id,
        start=0.0,
        duration=duration,
        language=lang,
        speaker=f"{cut_id}_spk",
    )
    return MonoCut(
        id=cut_id, start=0.0, duration=duration, channel=0, features=features, supervisions=[sup]
    )


def toy_config(**train: object) -> dict:
    """A raw system config sized for the toy corpus (a few thousand parameters); `train`
    overrides keys of the `train` section. Resolve it with `apm.train.config.resolve_config`."""
    return {
        "model": {
            "trunk": "tdnn",
            "channels": 32,
            "stats_channels": 64,
            "embed_dim": 32,
            "phone_channels": 32,
            "phone_hidden_layers": 1,
        },
        "loss": {"kind": "apm", "margin": 0.2, "scale": 30.0, "phone_weight": 0.3},
        "train": {
            "epochs": 2,
            "batch_size": 16,
            "chunk_min_frames": 80,
            "chunk_max_frames": 120,
            "min_utt_frames": 40,
            "valid_fraction": 0.1,
            "threads": 1,
            "log_interval": 2,
            **train,
        },
        "extract": {"max_chunk_frames": 150, "threads": 1},
    }
