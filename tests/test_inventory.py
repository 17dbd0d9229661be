"""The shared oracle phone inventory and the language information of frame labels."""

from __future__ import annotations

import numpy as np
import pytest

from apm.align.inventory import SHARED_CLASSES, broad_class, language_information, shared_lookup


@pytest.mark.parametrize(
    ("symbol", "cls"),
    [
        ("SIL", "SIL"), ("_:", "SIL"), ("a", "V_open"), ("a:", "V_open"), ("A5", "V_open"),
        ("i2", "V_close_front"), ("E", "V_mid_front"), ("@", "V_central"), ("3:", "V_central"),
        ("O", "V_mid_back"), ("u\"", "V_close_back"), ("8", "V_central"), ("aI", "V_open"), ("t", "C_stop_voiceless"),
        ("t;", "C_stop_voiceless"), ("k.h", "C_stop_voiceless"), ("?", "C_stop_voiceless"),
        ("d", "C_stop_voiced"), ("ts.h", "C_affricate"), ("tS", "C_affricate"),
        ("dZ", "C_affricate"), ("s.", "C_fricative_voiceless"), ("S;", "C_fricative_voiceless"),
        ("x", "C_fricative_voiceless"), ("z", "C_fricative_voiced"), ("N", "C_nasal"),
        ("n^", "C_nasal"), ("l", "C_liquid"), ("r", "C_liquid"), ("*", "C_liquid"),
        ("j", "C_glide"), ("w", "C_glide"), ("%%", "OTHER"),
    ],
)  # fmt: skip
def test_broad_class_of_espeak_mnemonics(symbol: str, cls: str) -> None:
    assert broad_class(symbol) == cls


def test_shared_lookup_maps_every_symbol_into_few_classes() -> None:
    symbols = ["SIL", "a", "a:", "t", "t;", "ts.h", "i5", "n"]
    used, to_class = shared_lookup(symbols)
    assert used[0] == "SIL" and set(used) <= set(SHARED_CLASSES)
    assert [used[i] for i in to_class] == [broad_class(s) for s in symbols]
    assert to_class[1] == to_class[2] and to_class[3] == to_class[4]


def test_language_information_known_answers() -> None:
    langs = ["x", "y", "x", "y"]
    # the label names the language: share 1; the label is the same everywhere: share 0
    naming = [np.full(10, 1), np.full(10, 2), np.full(10, 1), np.full(10, 2)]
    assert language_information(naming, langs)["share"] == pytest.approx(1.0)
    same = [np.arange(10) % 3 for _ in langs]
    info = language_information(same, langs)
    assert info["share"] == pytest.approx(0.0, abs=1e-12) and info["h_language_bits"] == 1.0
    # half the frames name the language, the other half do not: I = 0.5 bit of H = 1 bit
    half = [np.concatenate([np.full(10, 1 + (g == "y")), np.zeros(10, int)]) for g in langs]
    assert language_information(half, langs)["share"] == pytest.approx(0.5)
