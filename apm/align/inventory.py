"""A shared, cross-language phone inventory for eSpeak's oracle labels, and how much a frame
label tells about the language.

eSpeak NG names its phonemes per language (`ts.h` in Mandarin, `t;` in Russian, tone-marked
vowels in Vietnamese and Cantonese), so its raw mnemonics are largely language-specific: a
phone branch trained on them learns a frame-level language classifier, not phonetics. The
shared inventory maps every mnemonic onto a broad phonetic class by its base symbol (eSpeak's
ASCII symbols follow Kirshenbaum: `@` schwa, `E` open-mid front, `N` velar nasal, `S` esh...),
dropping what makes it language-specific: tone digits, length, stress, and the secondary
articulation marks (`;` palatalised, `^` palatal, `.` retroflex, `#` and `"` centralised,
`~` nasalised, `h` aspiration after a stop).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

SIL = "SIL"
# Classes of the shared inventory, by the first symbol of the normalised mnemonic.
VOWEL_CLASSES = {
    "V_close_front": "iIyY",
    "V_mid_front": "eEW&",
    "V_open": "aA",
    "V_mid_back": "oO0Q",
    "V_close_back": "uUM",
    "V_central": "@3V18",  # 8: close-mid central rounded
}
CONSONANT_CLASSES = {
    "C_stop_voiceless": "ptkcq?",
    "C_stop_voiced": "bdgG",  # G: eSpeak's voiced velar (stop or fricative), one class
    "C_nasal": "mnNJ",
    "C_fricative_voiceless": "fsSTxXChH",
    "C_fricative_voiced": "vzZD",
    "C_liquid": "lrRL*",
    "C_glide": "wj",
}
AFFRICATE = "C_affricate"
OTHER = "OTHER"
SHARED_CLASSES = (SIL, *VOWEL_CLASSES, AFFRICATE, *CONSONANT_CLASSES, OTHER)
_AFFRICATES = re.compile(r"^(ts|tS|dz|dZ|tc|dj|tj|pf)")
_MARKS = re.compile(r"['\",:;^.#~%=!|_\-]")
_TONE = re.compile(r"(?<=.)[0-9]+$")  # tone digits after a symbol (3, 0, 1 alone are vowels)
_BY_FIRST = {c: cls for table in (VOWEL_CLASSES, CONSONANT_CLASSES) for cls, cs in table.items()
             for c in cs}  # fmt: skip


def broad_class(symbol: str) -> str:
    """The shared-inventory class of one eSpeak mnemonic (as in the oracle's phones.txt)."""
    if symbol == SIL or symbol.startswith("_"):
        return SIL
    if _AFFRICATES.match(symbol):
        return AFFRICATE
    base = _TONE.sub("", _MARKS.sub("", symbol))
    return _BY_FIRST.get(base[:1], OTHER)


def shared_lookup(symbols: Iterable[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """(the shared inventory's symbols in id order, SIL first; an array from each input
    symbol's position in `symbols` to its class id). Classes nothing maps to are left out."""
    classes = [broad_class(s) for s in symbols]
    used = tuple(c for c in SHARED_CLASSES if c in classes or c == SIL)
    index = {c: i for i, c in enumerate(used)}
    return used, np.array([index[c] for c in classes], dtype=np.int32)


def language_information(
    labels: Iterable[np.ndarray], languages: Iterable[str]
) -> dict[str, float]:
    """How much the frame label says about the utterance's language, over all frames:
    mutual information I(label; language) in bits, H(language), their ratio `share` (0: the
    label says nothing about the language; 1: it names it), and how many labels occur."""
    labels, languages = list(labels), list(languages)
    lang_ids = {lang: i for i, lang in enumerate(sorted(set(languages)))}
    frame_lang = np.concatenate([np.full(len(x), lang_ids[g], np.int64)
                                 for x, g in zip(labels, languages, strict=True)])  # fmt: skip
    frame_label = np.concatenate([np.asarray(x, np.int64) for x in labels])
    joint = np.zeros((frame_label.max() + 1, len(lang_ids)))
    np.add.at(joint, (frame_label, frame_lang), 1.0)
    joint /= joint.sum()
    p_label, p_lang = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mi = float((joint[nz] * np.log2(joint[nz] / np.outer(p_label, p_lang)[nz])).sum())
    h_lang = float(-(p_lang[p_lang > 0] * np.log2(p_lang[p_lang > 0])).sum())
    return {"phones": int((p_label > 0).sum()), "mi_bits": round(mi, 4),
            "h_language_bits": round(h_lang, 4),
            "share": round(mi / h_lang, 4) if h_lang > 0 else 0.0}  # fmt: skip
