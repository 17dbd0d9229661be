"""Alignment report: per-language phone statistics and agreement with an oracle alignment."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from apm.align.phones import SILENCE_ID, PhoneTable
from apm.utils.frames import FRAME_SHIFT
from apm.utils.io import atomic_write


def _by_language(
    labels: Mapping[str, np.ndarray], language: Mapping[str, str]
) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for cut_id in sorted(labels):
        groups[language.get(cut_id, "unknown")].append(cut_id)
    return dict(sorted(groups.items()))


def phone_stats(labels: list[np.ndarray], table: PhoneTable, top: int) -> dict:
    """Silence fraction, mean phone duration (runs of one non-silence phone) and top phones."""
    frames = np.concatenate(labels) if labels else np.zeros(0, np.int32)
    speech = frames[frames != SILENCE_ID]
    runs = 0
    for x in labels:
        if len(x):
            starts = np.concatenate([[0], np.flatnonzero(np.diff(x)) + 1])
            runs += int((x[starts] != SILENCE_ID).sum())
    counts = np.bincount(speech, minlength=len(table))
    order = [int(i) for i in np.argsort(-counts, kind="stable")[:top] if counts[i] > 0]
    return {
        "utterances": len(labels),
        "seconds": round(len(frames) * FRAME_SHIFT, 2),
        "silence_fraction": round(1 - len(speech) / max(len(frames), 1), 4),
        "mean_phone_ms": round(len(speech) / runs * FRAME_SHIFT * 1000, 1) if runs else None,
        "phones_used": int((counts > 0).sum()),
        "top_phones": [[table.symbols[i], round(counts[i] / len(speech), 4)] for i in order],
    }


def oracle_agreement(virtual: list[np.ndarray], oracle: list[np.ndarray]) -> dict:
    """Normalised mutual information between oracle and virtual frame labels.

    `nmi` uses every frame; `nmi_speech` only the oracle's speech frames, so agreeing on where
    the silence is does not count.
    """
    v, o = np.concatenate(virtual), np.concatenate(oracle)
    speech = o != SILENCE_ID
    return {
        "frames": len(v),
        "nmi": round(float(normalized_mutual_info_score(o, v)), 4),
        "nmi_speech": round(float(normalized_mutual_info_score(o[speech], v[speech])), 4)
        if speech.any()
        else None,
    }


def build_report(
    labels: Mapping[str, np.ndarray],
    language: Mapping[str, str],
    table: PhoneTable,
    top: int,
    oracle: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """Per-language statistics (and oracle agreement on the cuts the oracle covers)."""
    out = {}
    for lang, ids in _by_language(labels, language).items():
        stats = phone_stats([labels[i] for i in ids], table, top)
        if oracle is not None:
            both = [i for i in ids if i in oracle]
            if both:
                stats["oracle"] = oracle_agreement(
                    [labels[i] for i in both], [oracle[i] for i in both]
                )
        out[lang] = stats
    return out


def write_report(dst: str | os.PathLike, report: dict) -> None:
    """`report.json` (everything) and `report.md` (a table per language)."""
    dst = Path(dst)
    with atomic_write(dst / "report.json", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    with atomic_write(dst / "report.md", encoding="utf-8") as f:
        f.write(_markdown(report))


def _markdown(report: dict) -> str:
    s = report["summary"]
    lines = [
        f"# Phone alignment: {s['source']}",
        "",
        f"{s['utterances']} utterances, {len(report['phones'])} phones (SIL = 0); "
        f"speed-perturbed copies: {s.get('perturbed', 'n/a')}; "
        f"too short: {s['too_short']}, silence only: {s['silence_only']}, "
        f"failed: {s['failed']}.",
    ]
    if s.get("xrt_per_core"):
        lines.append(
            f"Decoded {s['audio_seconds']:.0f} s of audio at {s['xrt_per_core']:.1f}x real "
            "time per core (audio seconds / decoder CPU seconds)."
        )
    info = s.get("language_information") or {}
    if info:
        lines += ["", "Share of the language entropy that the frame label explains "
                  "(I(label; language) / H(language), all frames; 0 = says nothing about the "
                  "language, 1 = names it):", "", "| labels | phones | share | MI (bits) |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {name} | {v.get('phones', '')} | {v['share']:.1%} | {v['mi_bits']:.3f} |"
                  for name, v in info.items()]  # fmt: skip
    lines += [
        "",
        "| language | utts | seconds | silence | mean phone (ms) | NMI | NMI speech | top phones |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lang, st in report["languages"].items():
        orc = st.get("oracle", {})
        top = ", ".join(f"{p} {f:.1%}" for p, f in st["top_phones"][:5])
        lines.append(
            f"| {lang} | {st['utterances']} | {st['seconds']:.0f} | {st['silence_fraction']:.1%}"
            f" | {st['mean_phone_ms']} | {orc.get('nmi', '')} | {orc.get('nmi_speech', '')}"
            f" | {top} |"
        )
    return "\n".join(lines) + "\n"
