"""eSpeak NG driven in-process through ctypes (library and voices from `espeakng-loader`).

The library keeps global state and is not thread-safe: use one `Espeak` per process (the
corpus builder parallelises with processes). Synthesis is synchronous; a callback collects
the samples and the phoneme events, whose `sample` field is the output sample index at which
the phoneme starts.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import espeakng_loader
import numpy as np

from apm.utils.errors import ApmError

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
CHARS_UTF8 = 1
EVENT_LIST_TERMINATED = 0
EVENT_PHONEME = 7
PARAM_RATE, PARAM_PITCH, PARAM_RANGE = 1, 3, 4
EE_OK = 0


class _Event(ctypes.Structure):
    """`espeak_EVENT` of speak_lib.h (the `id` union read as its 8-byte `string` member)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass
class Synthesis:
    """One synthesized text: int16 samples at `sampling_rate` and phoneme onsets.

    `phonemes[i] = (start_sample, mnemonic)`; a phoneme lasts until the next one starts (the
    last one until the end of the audio). Pauses are mnemonics starting with `_`; a language
    switch shows up as a pseudo-phoneme `(xx)`.
    """

    samples: np.ndarray
    sampling_rate: int
    phonemes: list[tuple[int, str]]


def data_path() -> str:
    return espeakng_loader.get_data_path()


def available_variants() -> list[str]:
    """Voice variants shipped with the wheel (`espeak-ng-data/voices/!v`)."""
    return sorted(os.listdir(os.path.join(data_path(), "voices", "!v")))


def available_voices() -> list[str]:
    """Language voice names (file names under `espeak-ng-data/lang`, e.g. `cmn`, `ru`)."""
    names = []
    for _root, _dirs, files in os.walk(os.path.join(data_path(), "lang")):
        names.extend(files)
    return sorted(set(names))


class Espeak:
    """One initialised eSpeak NG instance (one per process)."""

    _instance_pid: int | None = None

    def __init__(self) -> None:
        if Espeak._instance_pid == os.getpid():
            raise ApmError("eSpeak NG is already initialised in this process; reuse that instance")
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.sampling_rate = self._lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path().encode(), INITIALIZE_PHONEME_EVENTS
        )
        if self.sampling_rate <= 0:
            raise ApmError(f"eSpeak NG failed to initialise with data at {data_path()}")
        self._chunks: list[np.ndarray] = []
        self._phonemes: list[tuple[int, str]] = []
        # Keep a reference: ctypes callbacks are freed when the Python object dies.
        self._callback = _Callback(self._collect)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None
        Espeak._instance_pid = os.getpid()

    @staticmethod
    def used_in_this_process() -> bool:
        return Espeak._instance_pid == os.getpid()

    def _collect(self, wav, num_samples: int, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == EVENT_PHONEME:
                name = bytes(ev.id).split(b"\0", 1)[0].decode("utf-8", errors="replace")
                self._phonemes.append((ev.sample, name))
            i += 1
        return 0

    def set_voice(self, voice: str, variant: str | None = None) -> None:
        """Select language voice `voice` (e.g. `ru`), optionally with a `!v` variant."""
        name = f"{voice}+{variant}" if variant else voice
        if name == self._voice:
            return
        # eSpeak silently ignores a missing variant, so check it here.
        missing_variant = variant is not None and variant not in available_variants()
        if missing_variant or self._lib.espeak_SetVoiceByName(name.encode()) != EE_OK:
            raise ApmError(
                f"eSpeak NG has no voice '{name}'; voices: {' '.join(available_voices())}; "
                f"variants: {' '.join(available_variants())}"
            )
        self._voice = name

    def set_prosody(self, rate: int, pitch: int, pitch_range: int) -> None:
        """Speaking rate (words per minute), base pitch and pitch range (0-100)."""
        for param, value in ((PARAM_RATE, rate), (PARAM_PITCH, pitch), (PARAM_RANGE, pitch_range)):
            self._lib.espeak_SetParameter(param, int(value), 0)

    def synthesize(self, text: str, seed: int) -> Synthesis:
        """Speak `text`; `seed` seeds eSpeak's noise generator (breathy voices, which is
        otherwise seeded from the clock)."""
        self._chunks, self._phonemes = [], []
        self._lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        data = text.encode("utf-8") + b"\0"
        rc = self._lib.espeak_Synth(data, len(data), 0, 0, 0, CHARS_UTF8, None, None)
        if rc != EE_OK:
            raise ApmError(f"eSpeak NG synthesis failed (code {rc}) for text '{text}'")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return Synthesis(samples, self.sampling_rate, self._phonemes)

    def text_to_phonemes(self, text: str) -> str:
        """eSpeak's phoneme mnemonics for `text` in the current voice (clauses joined by ' ')."""
        buf = ctypes.c_char_p(text.encode("utf-8"))
        ptr = ctypes.pointer(buf)
        parts = []
        while buf.value:
            out = self._lib.espeak_TextToPhonemes(ptr, CHARS_UTF8, 0)
            if out:
                parts.append(out.decode("utf-8", errors="replace"))
        return " ".join(parts)
