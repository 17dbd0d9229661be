"""The aligner configuration (`conf/align.yaml`): every key optional, unknown keys rejected."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from apm.utils.config import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    load_yaml,
    reject_unknown,
)
from apm.utils.errors import ApmError

PERTURBED_MODES = ("warp", "decode")
ORACLE_INVENTORIES = ("shared", "raw")


@dataclass
class AlignConfig:
    # Options for pocketsphinx.Config (hmm/allphone default to the wheel's en-us model).
    pocketsphinx: dict[str, Any] = field(
        default_factory=lambda: {"lw": 1.5, "beam": 1e-9, "pbeam": 1e-9, "wip": 0.65}
    )
    # Audio shorter than this (seconds) is labelled all silence without decoding.
    min_duration: float = 0.3
    # Audio whose loudest 10 ms frame is below this RMS level (dBFS) is all silence.
    silence_db: float = -55.0
    # Speed-perturbed copies: "warp" the original's labels in time, or "decode" the copy.
    perturbed: str = "warp"
    # Kaldi import: phones that count as silence, and whether AA_B/AA_E/... merge onto AA.
    kaldi_silence: list[str] = field(
        default_factory=lambda: ["SIL", "sil", "<sil>", "SPN", "spn", "NSN", "nsn", "LAU"]
    )
    kaldi_merge_positions: bool = True
    # Kaldi import: the labels come from features with --snip-edges=true (Kaldi's default:
    # 1 + (N - 400) // 160 frames, window starting at 160 t) and are moved onto our grid
    # (apm.align.kaldi.unsnip_labels); false: they are already on ours (--snip-edges=false).
    kaldi_snip_edges: bool = False
    # Oracle (eSpeak) phones that count as silence besides SIL.
    oracle_silence: list[str] = field(default_factory=lambda: ["SIL"])
    # Oracle labels: "shared" maps eSpeak's per-language mnemonics onto broad phonetic classes
    # (apm.align.inventory) so that no oracle phone names a language; "raw" keeps them.
    oracle_inventory: str = "shared"
    # Phones listed per language in the report.
    report_top_phones: int = 10

    def __post_init__(self) -> None:
        if self.perturbed not in PERTURBED_MODES:
            raise ApmError(f"align conf: perturbed must be one of {PERTURBED_MODES}")
        if self.oracle_inventory not in ORACLE_INVENTORIES:
            raise ApmError(f"align conf: oracle_inventory must be one of {ORACLE_INVENTORIES}")
        if self.min_duration < 0 or self.report_top_phones < 1:
            raise ApmError("align conf: min_duration must be >= 0 and report_top_phones >= 1")


def load_align_config(path: str | os.PathLike | None) -> AlignConfig:
    """Read the YAML conf; a missing path means the defaults above."""
    if path is None:
        return AlignConfig()
    data = load_yaml(path, "align conf")
    reject_unknown(data, (f.name for f in fields(AlignConfig)), str(path))
    _check_types(data, str(path))
    if "pocketsphinx" in data:
        data["pocketsphinx"] = {**AlignConfig().pocketsphinx, **(data["pocketsphinx"] or {})}
    try:
        return AlignConfig(**data)
    except TypeError as e:
        raise ApmError(f"{path}: {e}") from e


def _check_types(data: dict, where: str) -> None:
    """Typed checks of the YAML values (apm.utils.config), in place."""
    if "min_duration" in data:
        data["min_duration"] = check_number(data["min_duration"], "min_duration", "", path=where)
    if "silence_db" in data:
        data["silence_db"] = check_number(
            data["silence_db"], "silence_db", "", minimum=None, maximum=0.0, path=where
        )
    if "report_top_phones" in data:
        data["report_top_phones"] = check_int(
            data["report_top_phones"], "report_top_phones", "", minimum=1, path=where
        )
    if "perturbed" in data:
        check_choice(data["perturbed"], PERTURBED_MODES, "perturbed", "", path=where)
    for key in ("kaldi_merge_positions", "kaldi_snip_edges"):
        if key in data:
            check_bool(data[key], key, "", path=where)
    for key in ("kaldi_silence", "oracle_silence"):
        if key in data and not (
            isinstance(data[key], list) and all(isinstance(p, str) for p in data[key])
        ):
            raise ApmError(f"{where}: '{key}' is {data[key]!r}; it must be a list of phones")
    if "pocketsphinx" in data and not isinstance(data["pocketsphinx"], (dict, type(None))):
        raise ApmError(f"{where}: 'pocketsphinx' must be a mapping of pocketsphinx options")
