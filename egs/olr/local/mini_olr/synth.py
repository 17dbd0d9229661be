"""Rendering utterances in worker processes.

eSpeak NG carries internal state from one synthesis to the next (its pitch-flutter and
waveform phase are never reset, not even by re-initialisation), so an utterance's samples
depend on what the same process synthesized before. The corpus is therefore rendered in
fixed chunks of utterances, each in a fresh process (`render_chunk`): the output depends on
the chunk, never on the number of jobs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from apm.utils.errors import ApmError
from mini_olr import channel
from mini_olr.espeak import Espeak, Synthesis
from mini_olr.languages import BABBLE, Language
from mini_olr.spec import VARIANTS, Utterance, stable_seed
from mini_olr.text import Vocabulary, build_vocabulary, sample_sentence

MIN_WORDS, MAX_WORDS, MAX_WORDS_SHORT_LANG = 5, 25, 40
ATTEMPTS = 10
BABBLE_TALKERS = 8


@dataclass
class Rendered:
    utt: str
    num_samples: int
    phonemes: list[tuple[int, str]]  # (start sample at 16 kHz, eSpeak mnemonic)
    text: str
    skipped: int  # sentences rejected because eSpeak switched language


class Renderer:
    """One process's eSpeak instance plus the vocabularies; renders utterances."""

    def __init__(self, vocabs: dict[str, Vocabulary], seed: int) -> None:
        self.espeak = Espeak()
        self.vocabs = vocabs
        self.seed = seed
        self._babble: list[np.ndarray] | None = None

    def _speak(
        self, lang: Language, variant: str, prosody: tuple[int, int, int], text: str, seed: int
    ) -> Synthesis:
        self.espeak.set_voice(lang.voice, variant)
        self.espeak.set_prosody(*prosody)
        return self.espeak.synthesize(text, seed)

    def speech(self, u: Utterance, rng: np.random.Generator) -> tuple[Synthesis, str, int]:
        """Synthesize a sentence whose warped duration lies in the set's range.

        The word count is re-estimated from each attempt's speaking rate. Sentences in which
        eSpeak switched language are rejected and counted.
        """
        spk, vocab = u.speaker, self.vocabs[u.language.code]
        target = rng.uniform(u.spec.min_dur, u.spec.max_dur)
        words_per_s, skipped = 2.0, 0
        for attempt in range(ATTEMPTS):
            cap = MAX_WORDS if attempt < ATTEMPTS // 2 else MAX_WORDS_SHORT_LANG
            n = int(np.clip(round(target * words_per_s), MIN_WORDS, cap))
            text = sample_sentence(vocab, n, rng)
            # Small per-utterance prosody jitter: a speaker does not read every sentence alike.
            prosody = (
                round(spk.rate * rng.uniform(0.94, 1.06)),
                int(np.clip(spk.pitch + rng.integers(-4, 5), 0, 100)),
                spk.pitch_range,
            )
            syn = self._speak(u.language, spk.variant, prosody, text, int(rng.integers(2**31)))
            if any(p.startswith("(") for _, p in syn.phonemes):
                skipped += 1
                continue
            dur = len(syn.samples) / (syn.sampling_rate * spk.warp)
            if u.spec.min_dur <= dur <= u.spec.max_dur:
                return syn, text, skipped
            words_per_s = n / max(dur, 0.1)
        raise ApmError(
            f"utterance {u.utt}: no sentence of {MIN_WORDS}-{MAX_WORDS_SHORT_LANG} words gave "
            f"{u.spec.min_dur}-{u.spec.max_dur} s in {ATTEMPTS} attempts ({skipped} unspeakable); "
            f"the vocabulary of {u.language.code} is unusable with voice {u.language.voice}"
        )

    def babble_pool(self) -> list[np.ndarray]:
        """Speech of non-OLR languages (BABBLE) for babble noise, made once per process."""
        if self._babble is None:
            self._babble = []
            for k in range(BABBLE_TALKERS):
                rng = np.random.default_rng(stable_seed(self.seed, "babble", k))
                lang = BABBLE[k % len(BABBLE)]
                text = sample_sentence(self.vocabs[lang.code], 12, rng)
                variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
                prosody = (int(rng.integers(140, 200)), 50, 50)
                syn = self._speak(lang, variant, prosody, text, int(rng.integers(2**31)))
                x, _ = channel.warp_resample(syn.samples / 32768.0, syn.sampling_rate, 1.0)
                self._babble.append(x)
        return self._babble

    def apply_channel(self, x: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
        if kind == "train":
            # Mostly clean; some light room reverb, some white noise at high SNR.
            r = rng.random()
            if r < 0.2:
                rir = channel.room_impulse_response(
                    rng, rng.uniform(0.15, 0.35), rng.uniform(6, 12)
                )
                return channel.reverberate(x, rir)
            if r < 0.4:
                return channel.add_noise(x, rng.standard_normal(len(x)), rng.uniform(20, 30))
            return x
        if kind == "cross":
            # Strong reverb, then the telephone line: nothing like this is in training.
            rir = channel.room_impulse_response(rng, rng.uniform(0.6, 1.2), rng.uniform(-3, 3))
            return channel.telephone(channel.reverberate(x, rir))
        if kind == "noisy":
            noise_type = ("babble", "pink", "brown", "hum")[int(rng.integers(4))]
            if noise_type == "babble":
                noise = channel.babble(rng, len(x), self.babble_pool())
            elif noise_type == "hum":
                noise = channel.hum(rng, len(x))
            else:
                noise = channel.colored_noise(rng, len(x), 1.0 if noise_type == "pink" else 2.0)
            return channel.add_noise(x, noise, rng.uniform(0, 15))
        return x

    def render(self, u: Utterance, wav_path: str) -> Rendered:
        rng = np.random.default_rng(u.seed)
        syn, text, skipped = self.speech(u, rng)
        x, ratio = channel.warp_resample(syn.samples / 32768.0, syn.sampling_rate, u.speaker.warp)
        phonemes = [(int(round(s * ratio)), p) for s, p in syn.phonemes]
        x = self.apply_channel(x, u.spec.channel, rng)
        if u.segment_samples is not None:
            x, phonemes = cut_segment(x, phonemes, u.segment_samples, rng)
        os.makedirs(os.path.dirname(wav_path), exist_ok=True)
        sf.write(wav_path, channel.to_int16(x, rng), channel.RATE, subtype="PCM_16")
        return Rendered(u.utt, len(x), phonemes, text, skipped)


def cut_segment(
    x: np.ndarray, phonemes: list[tuple[int, str]], length: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """A `length`-sample segment starting inside the speech (first to last non-pause phoneme),
    with the phoneme onsets shifted to it (the phoneme running at the cut starts at 0)."""
    speech = [s for s, p in phonemes if not p.startswith("_")]
    first = speech[0] if speech else 0
    latest = max(len(x) - length, 0)
    start = int(rng.integers(min(first, latest), latest + 1))
    seg = x[start : start + length]
    shifted = [(max(s - start, 0), p) for s, p in phonemes if s < start + length]
    running = [i for i, (s, _) in enumerate(shifted) if s == 0]
    return seg, shifted[running[-1] :] if running else shifted


_renderer: Renderer | None = None


def init_worker(vocabs: dict[str, Vocabulary], seed: int) -> None:
    global _renderer
    _renderer = Renderer(vocabs, seed)


def render_chunk(job: tuple[list[Utterance], list[str]]) -> list[Rendered]:
    """Pool task: render the utterances of one chunk in order (fresh process per chunk)."""
    utts, paths = job
    assert _renderer is not None, "init_worker was not called in this process"
    return [_renderer.render(u, p) for u, p in zip(utts, paths, strict=True)]


def vocabulary_task(job: tuple[Language, int]) -> Vocabulary:
    """Pool task: build one language's vocabulary in a fresh process."""
    lang, max_words = job
    return build_vocabulary(Espeak(), lang, max_words)
