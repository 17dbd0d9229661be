"""YAML configs: reading, defaults, and the checks every stage's config shares.

A misspelt YAML key would otherwise be silently ignored and the run would do something other
than what the user wrote down, so unknown keys are always errors that list the valid ones.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from apm.utils.errors import ApmError


def load_yaml(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """Read a YAML mapping (an empty file is {}); `what` names the config in errors."""
    path = Path(path)
    if not path.is_file():
        raise ApmError(f"{path}: {what} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ApmError(f"{path}: {what} is not valid YAML: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ApmError(f"{path}: {what} must be a mapping of options, got {type(raw).__name__}")
    return raw


def reject_unknown(keys: Iterable[str], valid: Iterable[str], where: str) -> None:
    """ApmError naming every key of `keys` that is not in `valid`, and the valid ones."""
    valid = set(valid)
    unknown = sorted(set(keys) - valid)
    if unknown:
        raise ApmError(f"{where}: unknown keys {unknown}; valid keys are {sorted(valid)}")


def merge_section(
    cfg: Mapping[str, Any] | None, defaults: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """A copy of `defaults` updated with `cfg`; a key not in `defaults` is an ApmError."""
    cfg = dict(cfg or {})
    reject_unknown(cfg, defaults, where)
    return {**copy.deepcopy(dict(defaults)), **cfg}


def check_choice(value: Any, choices: tuple[str, ...], key: str, section: str) -> str:
    """`value` if it is one of `choices`, else an ApmError naming the key."""
    if value not in choices:
        raise ApmError(f"'{section}.{key}' is {value!r}; choose one of {', '.join(choices)}")
    return value


def check_number(
    value: Any, key: str, section: str, *, minimum: float = 0.0, strict: bool = False
) -> float:
    """`value` as a float if it is >= `minimum` (> when `strict`), else an ApmError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        relation = ">" if strict else ">="
        raise ApmError(f"'{section}.{key}' is {value!r}; it must be a number {relation} {minimum}")
    return float(value)
