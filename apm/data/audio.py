"""Opening the audio of a `wav.scp` entry: header facts, and the checks every recipe needs
(readable, 16 kHz, mono, at least one 25 ms frame long)."""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass

import soundfile as sf

from apm.data.kaldi_dir import is_pipe

SAMPLING_RATE = 16000
MIN_DURATION = 0.025  # one analysis window: anything shorter has no complete frame
PIPE_TIMEOUT = 600  # seconds a wav.scp command may run


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


def probe(entry: str) -> AudioInfo:
    """Open the audio of one wav.scp entry (file or pipe) and check it.

    Files are read from their header; pipes are run and decoded in full, since a streamed
    header may not carry the length.
    """
    try:
        if is_pipe(entry):
            data, rate = sf.read(io.BytesIO(run_pipe(entry)), dtype="int16", always_2d=True)
            info = AudioInfo(rate, data.shape[1], data.shape[0])
        else:
            meta = sf.info(entry)
            info = AudioInfo(meta.samplerate, meta.channels, meta.frames)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioProblem(
            f"cannot read audio ({e})",
            "check the file (e.g. `soxi FILE`), copy it again from the release, or remove the utterance",
        ) from e
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
