"""OLR score files, in the two formats of the challenge tools.

- matrix: the first line holds the language names; every next line is `utt s_1 ... s_K`, one
  score per language in header order.
- pairs: `lang utt score` per line.

Readers reject what the challenge script would silently mis-score: duplicated scores, NaN or
inf, rows of the wrong width, and a file in the other format (each with the line and the fix).
Plain ASCII files are parsed vectorised (apm.metrics.fastparse); anything the fast path
cannot decide, every error included, goes through the line-by-line reader.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apm.metrics.fastparse import Fallback, floats, has_duplicates, index_of, split_tokens
from apm.utils import ApmError, atomic_write

FORMATS = ("matrix", "pairs")


@dataclass
class Scores:
    """Scores of a file as a dense matrix; NaN marks a (utt, language) pair without a score."""

    languages: list[str]
    utts: list[str]
    matrix: np.ndarray  # float64, len(utts) x len(languages)
    path: Path

    def lang_index(self) -> dict[str, int]:
        return {lang: i for i, lang in enumerate(self.languages)}

    def utt_index(self) -> dict[str, int]:
        return {utt: i for i, utt in enumerate(self.utts)}


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _bad_score(token: str, where: str) -> ApmError:
    try:
        float(token)
    except ValueError:
        return ApmError(f"{where}: score '{token}' is not a number")
    return ApmError(
        f"{where}: score is {token}; NaN/inf scores cannot be thresholded, "
        "fix the back-end that wrote them"
    )


def _parse_scores(tokens: list[str], where: str) -> list[float]:
    """Floats of `tokens`; an unparsable or non-finite one is an error naming `where`."""
    try:
        values = [float(tok) for tok in tokens]
    except ValueError:
        values = []
    if len(values) != len(tokens) or not all(map(math.isfinite, values)):
        bad = next(t for t in tokens if not _is_number(t) or not math.isfinite(float(t)))
        raise _bad_score(bad, where)
    return values


def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise ApmError(f"{path}: score file not found")
    with open(path, encoding="utf-8") as f:
        lines = [(n, line.split()) for n, line in enumerate(f, 1)]
    lines = [(n, fields) for n, fields in lines if fields]
    if not lines:
        raise ApmError(f"{path}: empty score file")
    return lines


def _read_matrix_lines(path: Path) -> Scores:
    lines = _read_lines(path)
    header = lines[0][1]
    if len(header) == 3 and _is_number(header[2]) and not _is_number(header[1]):
        raise ApmError(
            f"{path}:1: '{' '.join(header)}' looks like a pairs line (lang utt score), "
            "not a matrix header of language names; use -pairs for this file"
        )
    numeric = [tok for tok in header if _is_number(tok)]
    if numeric:
        raise ApmError(
            f"{path}:1: the matrix header must list language names, found number '{numeric[0]}'"
        )
    if len(set(header)) != len(header):
        raise ApmError(f"{path}:1: a language appears twice in the header")
    width = len(header) + 1
    utts: list[str] = []
    rows: list[list[float]] = []
    seen: set[str] = set()
    for lineno, fields in lines[1:]:
        if len(fields) != width:
            raise ApmError(
                f"{path}:{lineno}: {len(fields)} fields, expected {width} (utt and one score "
                f"per header language); a pairs file needs -pairs"
            )
        utt = fields[0]
        if utt in seen:
            raise ApmError(f"{path}:{lineno}: utterance '{utt}' is scored twice")
        seen.add(utt)
        utts.append(utt)
        rows.append(_parse_scores(fields[1:], f"{path}:{lineno}"))
    matrix = np.array(rows, dtype=np.float64).reshape(len(utts), len(header))
    return Scores(header, utts, matrix, path)


def _read_pairs_lines(path: Path) -> Scores:
    lines = _read_lines(path)
    lang_idx: dict[str, int] = {}
    utt_idx: dict[str, int] = {}
    cells: list[tuple[int, int, float]] = []
    first = lines[0][1]
    if len(first) != 3 or not _is_number(first[2]):
        raise ApmError(
            f"{path}:1: '{' '.join(first)}' is not a 'lang utt score' line; it looks like a "
            "matrix header of language names, use -matrix for this file"
        )
    for lineno, fields in lines:
        if len(fields) != 3:
            raise ApmError(f"{path}:{lineno}: {len(fields)} fields, expected 'lang utt score'")
        lang, utt, token = fields
        li = lang_idx.setdefault(lang, len(lang_idx))
        ui = utt_idx.setdefault(utt, len(utt_idx))
        cells.append((ui, li, _parse_scores([token], f"{path}:{lineno}")[0]))
    matrix = np.full((len(utt_idx), len(lang_idx)), np.nan)
    ui_arr = np.fromiter((c[0] for c in cells), dtype=np.int64, count=len(cells))
    li_arr = np.fromiter((c[1] for c in cells), dtype=np.int64, count=len(cells))
    flat = ui_arr * len(lang_idx) + li_arr
    uniq, counts = np.unique(flat, return_counts=True)
    if len(uniq) != len(flat):
        dup = int(uniq[np.argmax(counts > 1)])
        utt = list(utt_idx)[dup // len(lang_idx)]
        lang = list(lang_idx)[dup % len(lang_idx)]
        raise ApmError(f"{path}: ({lang}, {utt}) is scored {counts.max()} times; keep one score")
    matrix[ui_arr, li_arr] = [c[2] for c in cells]
    return Scores(list(lang_idx), list(utt_idx), matrix, path)


def _read_matrix_fast(path: Path) -> Scores:
    """The matrix reader's result, vectorised; Fallback where the line reader must decide."""
    tokens, counts = split_tokens(path)
    used = counts[counts > 0]
    if len(used) == 0:
        raise Fallback
    width = int(used[0]) + 1
    header = [tok.decode("ascii") for tok in tokens[: width - 1]]
    if any(map(_is_number, header)) or len(set(header)) != len(header):
        raise Fallback
    if np.any(used[1:] != width):
        raise Fallback
    table = np.array(tokens[width - 1 :], dtype=object).reshape(len(used) - 1, width)
    utts, _ = index_of(table[:, 0].tolist())
    if len(utts) != len(table):
        raise Fallback
    values = floats(table[:, 1:].ravel().tolist())
    return Scores(header, utts, values.reshape(len(utts), len(header)), path)


def _read_pairs_fast(path: Path) -> Scores:
    """The pairs reader's result, vectorised; Fallback where the line reader must decide."""
    tokens, counts = split_tokens(path)
    used = counts[counts > 0]
    if len(used) == 0 or np.any(used != 3):
        raise Fallback
    values = floats(tokens[2::3])
    languages, li = index_of(tokens[0::3])
    utts, ui = index_of(tokens[1::3])
    if has_duplicates(ui, li, len(languages)):
        raise Fallback
    matrix = np.full((len(utts), len(languages)), np.nan)
    matrix[ui, li] = values
    return Scores(languages, utts, matrix, path)


def _read_matrix(path: Path) -> Scores:
    if path.is_file():
        try:
            return _read_matrix_fast(path)
        except Fallback:
            pass
    return _read_matrix_lines(path)


def _read_pairs(path: Path) -> Scores:
    if path.is_file():
        try:
            return _read_pairs_fast(path)
        except Fallback:
            pass
    return _read_pairs_lines(path)


def read_scores(path: str | os.PathLike, fmt: str = "matrix") -> Scores:
    """Read a score file in `fmt` ("matrix" or "pairs")."""
    if fmt not in FORMATS:
        raise ApmError(f"unknown score format '{fmt}'; choose one of {', '.join(FORMATS)}")
    return _read_matrix(Path(path)) if fmt == "matrix" else _read_pairs(Path(path))


def write_matrix(
    path: str | os.PathLike, languages: list[str], utts: list[str], matrix: np.ndarray
) -> None:
    """Write an OLR matrix score file atomically (`%.6f`, rows in the given utt order)."""
    if matrix.shape != (len(utts), len(languages)):
        raise ValueError(
            f"score matrix {matrix.shape} does not match {len(utts)} x {len(languages)}"
        )
    if not np.all(np.isfinite(matrix)):
        bad = utts[int(np.argwhere(~np.isfinite(matrix))[0, 0])]
        raise ApmError(f"{path}: non-finite score for utterance {bad}; the back-end diverged")
    with atomic_write(path, encoding="utf-8") as f:
        f.write(" ".join(languages) + "\n")
        for utt, row in zip(utts, matrix, strict=True):
            f.write(utt + " " + " ".join(f"{v:.6f}" for v in row) + "\n")
