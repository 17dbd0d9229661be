"""PocketSphinx all-phone decoding: one 1-best phone per 10 ms frame.

Frame grid: PocketSphinx frame t is the 25.6 ms window starting at sample 160 t, centred at
10 t + 12.8 ms, i.e. 7.8 ms (0.78 frame) after our frame t, which is centred at 10 t + 5 ms
(apm.utils.frames). Its segmentation
covers frames 0..N-2 of our N frames, so delaying it by one frame (`FRAME_DELAY`, repeating the
first label) puts it on our grid with our count; eSpeak-synthesized speech confirms it: the
agreement with eSpeak's own phoneme timings peaks at this delay (see docs/recipe.md, stage 3).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from apm.align.labels import segments_to_frames
from apm.align.phones import SILENCE, SILENCE_ID, PhoneTable, model_phones
from apm.utils.errors import ApmError

log = logging.getLogger(__name__)

FRAME_DELAY = 1
SAMPLING_RATE = 16000


def default_model() -> tuple[str, str]:
    """The wheel's US-English acoustic model directory and phone language model."""
    import pocketsphinx

    root = pocketsphinx.get_model_path("en-us")
    return os.path.join(root, "en-us"), os.path.join(root, "en-us-phone.lm.bin")


def is_filler(phone: str) -> bool:
    """Sphinx fillers (`+NSN+`, `+SPN+`, ...) and silence all become our silence."""
    return phone == SILENCE or (phone.startswith("+") and phone.endswith("+"))


class SphinxAligner:
    """An all-phone PocketSphinx decoder built from the conf's `pocketsphinx` options."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = self.resolve(options)
        if int(self.options.get("samprate", SAMPLING_RATE)) != SAMPLING_RATE:
            raise ApmError(f"pocketsphinx samprate must be {SAMPLING_RATE}: audio is resampled")
        self.table = self.phone_table(options)
        phones = model_phones(os.path.join(self.options["hmm"], "mdef"))
        self._ids = {p: (SILENCE_ID if is_filler(p) else self.table.id(p)) for p in phones}
        self._decoder = self._make_decoder()

    @staticmethod
    def resolve(options: dict[str, Any]) -> dict[str, Any]:
        """The conf's options with the wheel's model as default and word search switched off."""
        hmm, allphone = default_model()
        resolved = {"hmm": hmm, "allphone": allphone, "loglevel": "ERROR", **options}
        resolved.update(lm=None, dict=None)
        return resolved

    @classmethod
    def phone_table(cls, options: dict[str, Any]) -> PhoneTable:
        """SIL, then the model's speech phones in its mdef order (fillers fold into SIL)."""
        phones = model_phones(os.path.join(cls.resolve(options)["hmm"], "mdef"))
        return PhoneTable((SILENCE, *[p for p in phones if not is_filler(p)]))

    def _make_decoder(self):
        import pocketsphinx

        try:
            return pocketsphinx.Decoder(pocketsphinx.Config(**self.options))
        except (KeyError, ValueError) as e:
            raise ApmError(f"bad pocketsphinx option in the align conf: {e}") from e
        except RuntimeError as e:
            raise ApmError(
                f"pocketsphinx failed to load hmm={self.options['hmm']} "
                f"allphone={self.options['allphone']}: {e}; check those paths in the conf"
            ) from e

    def decode(self, samples: np.ndarray) -> np.ndarray:
        """Per-frame phone ids (our grid) of 16 kHz int16 `samples`.

        After any error the decoder is rebuilt, because PocketSphinx is left inside the
        utterance and refuses the next one.
        """
        try:
            self._decoder.start_utt()
            self._decoder.process_raw(samples.astype(np.int16).tobytes(), full_utt=True)
            self._decoder.end_utt()
            segs = self._decoder.seg()
            if segs is None:
                raise RuntimeError("no hypothesis")
            found = [(s.word, s.start_frame, s.end_frame) for s in segs]
        except Exception:
            self._decoder = self._make_decoder()
            raise
        unknown = {w for w, _, _ in found if w not in self._ids}
        if unknown:
            raise RuntimeError(f"decoder returned phones outside the model's mdef: {unknown}")
        return segments_to_frames(((self._ids[w], a, b) for w, a, b in found), shift=FRAME_DELAY)
