"""Vectorised parsing of large whitespace-separated text files (trials, score files).

The readers built on this take a fast path for plain ASCII files and fall back to their
line-by-line reader on anything unusual (non-ASCII or control bytes, a malformed line, a
duplicate, an unparsable or non-finite score): the fast path never decides an error, so every
error message (with its line number) and every edge case of the line reader is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Bytes that bytes.split() and str.split() agree on: printable ASCII and ASCII whitespace
# (str.split() also splits at \x1c-\x1f and non-ASCII spaces; text-mode reading also ends
# lines at a lone \r, which is normalised below). In such a file, whitespace is <= 0x20.
_SIMPLE = bytes(range(0x21, 0x7F)) + b"\t\n\x0b\x0c\r "


class Fallback(Exception):
    """The fast path cannot decide: use the line-by-line reader."""


def split_tokens(path: Path) -> tuple[list[bytes], np.ndarray]:
    """(every whitespace-separated token of the file, token count of each line); line i of
    the file is index i - 1, and line i's tokens follow those of the lines before it.

    Raises Fallback for files with bytes outside printable ASCII and ASCII whitespace."""
    data = path.read_bytes()
    if not data.isascii() or data.translate(None, _SIMPLE):
        raise Fallback
    if b"\r" in data:  # universal newlines, as text-mode reading does
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if len(data) == 0:
        return [], np.zeros(0, dtype=np.int64)
    arr = np.frombuffer(data, dtype=np.uint8)
    space = (arr <= 0x20).view(np.int8)
    token_starts = np.flatnonzero(np.diff(space) == -1) + 1  # non-space after space
    if not space[0]:
        token_starts = np.concatenate([[0], token_starts])
    line_bounds = np.concatenate([[0], np.flatnonzero(arr == 0x0A) + 1])
    if line_bounds[-1] != len(data):
        line_bounds = np.concatenate([line_bounds, [len(data)]])
    counts = np.diff(np.searchsorted(token_starts, line_bounds))
    return data.split(), counts


def index_of(tokens: list[bytes]) -> tuple[list[str], np.ndarray]:
    """(distinct tokens in first-appearance order, as str; index of every token)."""
    distinct = dict.fromkeys(tokens)
    position = {tok: i for i, tok in enumerate(distinct)}
    idx = np.fromiter(map(position.__getitem__, tokens), dtype=np.int64, count=len(tokens))
    return [tok.decode("ascii") for tok in distinct], idx


def floats(tokens: list[bytes]) -> np.ndarray:
    """Finite float64 values of `tokens` (Python's float syntax); Fallback otherwise."""
    try:
        values = np.fromiter(map(float, tokens), dtype=np.float64, count=len(tokens))
    except ValueError:
        raise Fallback from None
    if not np.isfinite(values).all():
        raise Fallback
    return values


def has_duplicates(a: np.ndarray, b: np.ndarray, n_b: int) -> bool:
    """Whether some (a[i], b[i]) pair occurs twice (a, b non-negative indices, b < n_b)."""
    code = a * n_b + b
    if len(code) == 0:
        return False
    if code.max() < 8 * len(code) + 1024:
        return bool(np.bincount(code).max() > 1)
    return len(np.unique(code)) != len(code)
