"""Signal processing for mini-OLR: vocal-tract warp, rooms, noises, telephone channel.

All functions take float32/float64 mono signals at 16 kHz in [-1, 1] and an explicit
`numpy.random.Generator`, and return a signal of the same length (reverb tails and codec
delays are cut), so phoneme times stay valid.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np
from scipy import signal

RATE = 16000


@functools.lru_cache(maxsize=64)
def _lowpass(up: int, down: int) -> np.ndarray:
    """The anti-aliasing filter `resample_poly` designs itself (cached: design dominated)."""
    max_rate = max(up, down)
    return signal.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def resample(x: np.ndarray, up: int, down: int) -> np.ndarray:
    return signal.resample_poly(x, up, down, window=_lowpass(up, down))


def warp_resample(samples: np.ndarray, rate: int, warp: float) -> tuple[np.ndarray, Fraction]:
    """Resample `samples` (at `rate`) to 16 kHz as if they had been recorded at `rate * warp`.

    This scales every frequency, formants included, by `warp` (a shorter or longer vocal
    tract) and durations by 1 / `warp`. The assumed rate is rounded to a multiple of 50 Hz
    (warp steps of 0.2 %) to keep the polyphase filters short. Returns the signal and the
    factor mapping input sample indices to output ones.
    """
    source = rate if warp == 1.0 else 50 * round(rate * warp / 50)
    ratio = Fraction(RATE, source)
    out = resample(samples.astype(np.float64), ratio.numerator, ratio.denominator)
    return out, ratio


def _power(x: np.ndarray) -> float:
    return float(np.mean(x**2)) + 1e-12


def room_impulse_response(rng: np.random.Generator, rt60: float, drr_db: float) -> np.ndarray:
    """Synthetic RIR: a direct path plus exponentially decaying noise (decay to -60 dB in
    `rt60` s), scaled so that direct-to-reverberant energy ratio is `drr_db`."""
    n = int(rt60 * RATE)
    t = np.arange(n) / RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail[: int(0.002 * RATE)] = 0.0  # reflections arrive after the direct sound
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    tail[0] = 1.0
    return tail


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    return signal.fftconvolve(x, rir)[: len(x)]


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Mix `noise` (same length as `x`) at `snr_db` relative to the signal power."""
    gain = np.sqrt(_power(x) / (_power(noise) * 10 ** (snr_db / 10)))
    return x + gain * noise


def colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1 / f**exponent (1: pink, 2: brown), above 20 Hz."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    shape = np.zeros_like(f)
    shape[f >= 20] = f[f >= 20] ** (-exponent / 2)
    return np.fft.irfft(spec * shape, n)


def hum(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mains hum: 50 or 60 Hz with decaying odd and even harmonics and a slight buzz."""
    f0 = 50.0 if rng.random() < 0.5 else 60.0
    t = np.arange(n) / RATE
    out = np.zeros(n)
    for k in range(1, 16):
        out += np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k**1.2
    return out + 0.05 * rng.standard_normal(n)


def babble(rng: np.random.Generator, n: int, pool: list[np.ndarray]) -> np.ndarray:
    """3-6 talkers from `pool` (speech of non-OLR languages), each at a random offset."""
    out = np.zeros(n)
    for _ in range(int(rng.integers(3, 7))):
        src = pool[int(rng.integers(len(pool)))]
        reps = int(np.ceil((n + len(src)) / len(src)))
        tiled = np.tile(src, reps)
        start = int(rng.integers(len(src)))
        talker = tiled[start : start + n]
        out += talker / np.sqrt(_power(talker))
    return out


def telephone(x: np.ndarray) -> np.ndarray:
    """300-3400 Hz band, 8 kHz sampling and 8-bit mu-law coding, back to 16 kHz."""
    sos = signal.butter(6, [300, 3400], btype="bandpass", fs=RATE, output="sos")
    band = signal.sosfilt(sos, x)
    narrow = resample(band, 1, 2)
    peak = np.max(np.abs(narrow)) + 1e-9
    mu = 255.0
    y = np.sign(narrow / peak) * np.log1p(mu * np.abs(narrow / peak)) / np.log1p(mu)
    y = np.round((y + 1) * 127.5) / 127.5 - 1  # 256 levels
    decoded = np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu * peak
    wide = resample(decoded, 2, 1)
    return wide[: len(x)] if len(wide) >= len(x) else np.pad(wide, (0, len(x) - len(wide)))


def to_int16(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random playback level (peak at -1 to -12 dBFS, so level is no cue) as int16."""
    peak = np.max(np.abs(x)) + 1e-9
    level = 10 ** (-rng.uniform(1.0, 12.0) / 20)
    return np.clip(np.round(x / peak * level * 32767), -32768, 32767).astype(np.int16)
