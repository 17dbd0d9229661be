"""Opening the audio of a `wav.scp` entry: header facts, and the checks every recipe needs
(readable, finite samples, 16 kHz, mono, at least one 25 ms frame long).

`check_finite` is the one test for NaN/infinite samples, used wherever audio enters: stage 1
(`probe`), noise and RIR sets (`open_audio`, apm.features.augment) and the model package's
audio loading (apm.infer.identifier)."""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from apm.data.kaldi_dir import is_pipe

SAMPLING_RATE = 16000
MIN_DURATION = 0.025  # one analysis window: anything shorter has no complete frame
PIPE_TIMEOUT = 600  # seconds a wav.scp command may run
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # sample codings that can hold NaN or infinity
BLOCK_SAMPLES = 1 << 20  # samples read at a time when scanning a float file


class AudioProblem(Exception):
    """What is wrong with one recording, and what to do about it (message: '<what>; <fix>')."""

    def __init__(self, what: str, fix: str):
        super().__init__(f"{what}; {fix}")
        self.what = what
        self.fix = fix


@dataclass(frozen=True)
class AudioInfo:
    sampling_rate: int
    channels: int
    num_samples: int

    @property
    def duration(self) -> float:
        return self.num_samples / self.sampling_rate


def run_pipe(entry: str) -> bytes:
    """Run a `command |` entry and return its stdout; a failing command is an AudioProblem."""
    cmd = entry.rstrip()[:-1]
    try:
        proc = subprocess.run(
            cmd, shell=True, capture_output=True, timeout=PIPE_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise AudioProblem(
            f"command '{cmd}' ran longer than {PIPE_TIMEOUT} s", "run it by hand to see why"
        ) from e
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioProblem(
            f"command '{cmd}' failed with exit status {proc.returncode}"
            + (f" ({err[-1]})" if err else ""),
            "run it by hand to see why and fix wav.scp",
        )
    return proc.stdout


def check_finite(samples: np.ndarray, offset: int = 0) -> None:
    """Raise an AudioProblem when `samples` ([N] or [N, channels]; sample `offset` of the
    first row) hold NaN or infinite values: they would poison features and training."""
    samples = np.asarray(samples)
    if samples.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(samples)
    if bad.any():
        rows = bad.reshape(len(samples), -1).any(axis=1)
        first = int(np.argmax(rows))
        kinds = {"NaN": np.isnan(samples), "+Inf": np.isposinf(samples),
                 "-Inf": np.isneginf(samples)}  # fmt: skip
        counts = {k: int(v.reshape(len(samples), -1).any(axis=1).sum()) for k, v in kinds.items()}
        what = next(k for k, v in kinds.items() if v.reshape(len(samples), -1)[first].any())
        raise AudioProblem(
            f"audio has {int(rows.sum())} NaN or infinite sample(s) (the first is sample "
            f"{offset + first}): "
            + ", ".join(f"{n} {k}" for k, n in counts.items() if n)
            + f" (sample {offset + first} is {what})",
            "the file is corrupt: copy it again from the release, or remove it "
            "(--skip-bad true leaves it out and counts it)",
        )


def open_audio(entry: str) -> AudioInfo:
    """Open the audio of one wav.scp entry (file or pipe): its header facts, after checking that
    it decodes and that its samples are finite (AudioProblem otherwise).

    Files are read from their header, and in full only when float-coded (only floats can hold
    NaN); pipes are run and decoded in full, since a streamed header may not carry the length.
    """
    try:
        if is_pipe(entry):
            data, rate = sf.read(io.BytesIO(run_pipe(entry)), dtype="float32", always_2d=True)
            check_finite(data)
            return AudioInfo(rate, data.shape[1], data.shape[0])
        meta = sf.info(entry)
        if meta.subtype in FLOAT_SUBTYPES:
            offset = 0
            for block in sf.blocks(entry, blocksize=BLOCK_SAMPLES, dtype="float32", always_2d=True):
                check_finite(block, offset)
                offset += len(block)
        return AudioInfo(meta.samplerate, meta.channels, meta.frames)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioProblem(
            f"cannot read audio ({e})",
            "check the file (e.g. `soxi FILE`), copy it again from the release, or remove the utterance",
        ) from e


def probe(entry: str) -> AudioInfo:
    """Open the audio of one wav.scp entry (`open_audio`) and check its format (`check`)."""
    info = open_audio(entry)
    check(info)
    return info


def check(info: AudioInfo) -> None:
    """Raise an AudioProblem unless the audio is 16 kHz mono and at least one frame long."""
    if info.sampling_rate != SAMPLING_RATE:
        raise AudioProblem(
            f"sampling rate is {info.sampling_rate} Hz, not {SAMPLING_RATE}",
            "resample it (sox IN -r 16000 OUT.wav) or resample on the fly in wav.scp: "
            "'<id> sox IN -r 16000 -t wav - |'",
        )
    if info.channels != 1:
        raise AudioProblem(
            f"audio has {info.channels} channels, expected mono",
            "pick one channel (sox IN OUT.wav remix 1) or in wav.scp: "
            "'<id> sox IN -t wav - remix 1 |'",
        )
    if info.duration < MIN_DURATION:
        raise AudioProblem(
            f"audio is {info.num_samples} samples long, shorter than one 25 ms frame",
            "remove the utterance or use --skip-bad true",
        )
