"""Text for mini-OLR: a per-language vocabulary that eSpeak really speaks, and sentences.

Words come from `wordfreq` (top words with their frequencies) where it has the language,
else from CLDR via `babel` (territory, language, script, month and weekday names in that
locale, equally weighted). A word is kept only if eSpeak pronounces it in the voice's own
language by rule, judged from its phoneme string (`is_speakable`).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from apm.utils.errors import ApmError
from mini_olr.espeak import Espeak
from mini_olr.languages import Language

log = logging.getLogger(__name__)

LANG_SWITCH = re.compile(r"\([a-z]{2,3}(-[a-z]+)?\)")
SYLLABIC_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "HANGUL")
# Scripts written without spaces: sentence words are joined without a separator.
UNSPACED_VOICES = ("cmn", "yue", "ja")


@dataclass
class Vocabulary:
    language: str
    words: list[str]
    probs: np.ndarray  # sampling probability per word
    skipped: int  # candidate words rejected as unspeakable
    joiner: str  # "" for scripts written without spaces


def text_source_for_voice(voice: str) -> str:
    """The text source of an eSpeak voice not in the built-in tables."""
    import wordfreq
    from babel import Locale, UnknownLocaleError

    if voice in wordfreq.available_languages():
        return f"wordfreq:{voice}"
    try:
        Locale.parse(voice)
    except (UnknownLocaleError, ValueError) as e:
        raise ApmError(
            f"no text for eSpeak voice '{voice}': wordfreq has "
            f"{' '.join(sorted(wordfreq.available_languages()))} and CLDR has no locale "
            f"'{voice}'"
        ) from e
    return f"cldr:{voice}"


def _is_syllabic(word: str) -> bool:
    return any(unicodedata.name(ch, "").startswith(SYLLABIC_SCRIPTS) for ch in word)


def _is_letters(word: str) -> bool:
    """Letters and combining marks only (Brahmic scripts need the marks); no digits/symbols."""
    return bool(word) and all(unicodedata.category(ch)[0] in "LM" for ch in word)


def _is_kana(word: str) -> bool:
    return all("\u3041" <= ch <= "\u30ff" and ch != "\u30fb" for ch in word)


def is_speakable(phonemes: str, word: str) -> bool:
    """Did eSpeak pronounce `word` in its own language, not switch language or spell it?

    eSpeak marks a switch to another language's rules as `(xx)` in the phoneme string, marks
    the stressed syllable of every word it pronounces (`'` or `,`), and spells letters it
    cannot read as letter names, each of which carries its own stress mark. In alphabetic
    scripts a word with about as many stress marks as letters is therefore spelled.
    Syllabic scripts (Han, kana, Hangul) have one stress mark per syllable legitimately.
    """
    if not phonemes.strip() or LANG_SWITCH.search(phonemes):
        return False
    marks = phonemes.count("'") + phonemes.count(",")
    if marks == 0:
        return False
    return _is_syllabic(word) or not (marks >= 2 and 2 * marks >= len(word))


def _candidates(lang: Language, max_words: int) -> tuple[list[str], list[float]]:
    kind, _, name = lang.text.partition(":")
    if kind == "wordfreq":
        import wordfreq

        # The "small" frequency dict (top words, fast to load), not word_frequency(): that one
        # re-tokenizes (jieba for zh).
        table = wordfreq.get_frequency_dict(name, wordlist="small")
        words = sorted(table, key=lambda w: (-table[w], w))[: max_words * 10]
        freqs = [table[w] for w in words]
    elif kind == "cldr":
        from babel import Locale

        loc = Locale.parse(name)
        names = [
            *loc.territories.values(),
            *loc.languages.values(),
            *loc.scripts.values(),
            *loc.months["format"]["wide"].values(),
            *loc.days["format"]["wide"].values(),
        ]
        words = list(dict.fromkeys(w for n in names for w in n.split()))
        freqs = [1.0] * len(words)
    else:
        raise ApmError(
            f"language {lang.code}: text source '{lang.text}' is not wordfreq:* or cldr:*"
        )
    keep = [
        (w, f)
        for w, f in zip(words, freqs, strict=True)
        if _is_letters(w) and (_is_kana(w) if lang.kana_only else True)
    ]
    return [w for w, _ in keep[:max_words]], [f for _, f in keep[:max_words]]


def build_vocabulary(espeak: Espeak, lang: Language, max_words: int) -> Vocabulary:
    """Up to `max_words` candidate words of `lang` that eSpeak speaks (see `is_speakable`)."""
    words, freqs = _candidates(lang, max_words)
    espeak.set_voice(lang.voice)
    kept, weights = [], []
    for w, f in zip(words, freqs, strict=True):
        if is_speakable(espeak.text_to_phonemes(w), w):
            kept.append(w)
            weights.append(f)
    if len(kept) < 20:
        raise ApmError(
            f"language {lang.code}: only {len(kept)} of {len(words)} words from {lang.text} "
            f"are speakable by eSpeak voice '{lang.voice}'; choose another text source or voice"
        )
    # Square-root flattening: raw Zipf weights make sentences mostly function words.
    probs = np.sqrt(np.asarray(weights, dtype=np.float64))
    joiner = "" if lang.voice in UNSPACED_VOICES else " "
    log.debug("%s: %d of %d words speakable", lang.code, len(kept), len(words))
    return Vocabulary(lang.code, kept, probs / probs.sum(), len(words) - len(kept), joiner)


def sample_sentence(vocab: Vocabulary, num_words: int, rng: np.random.Generator) -> str:
    """`num_words` words drawn by frequency; clauses of 3-8 words separated by commas, which
    gives eSpeak's intonation phrases and pauses as in read speech."""
    idx = rng.choice(len(vocab.words), size=num_words, p=vocab.probs)
    out: list[str] = []
    clause = int(rng.integers(3, 9))
    for i, j in enumerate(idx):
        if i and i % clause == 0:
            out.append(", " if vocab.joiner else "，")
        elif i:
            out.append(vocab.joiner)
        out.append(vocab.words[j])
    return "".join(out) + ("." if vocab.joiner else "。")
