"""YAML configs: reading, defaults, and the checks every stage's config shares.

A misspelt YAML key would otherwise be silently ignored and the run would do something other
than what the user wrote down, so unknown keys are always errors that list the valid ones.
"""

from __future__ import annotations

import copy
import math
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


def check_choice(
    value: Any,
    choices: tuple[str, ...],
    key: str,
    section: str,
    *,
    path: str | os.PathLike | None = None,
) -> str:
    """`value` if it is one of `choices`, else an ApmError naming `path` and the key."""
    if value not in choices:
        raise ApmError(
            f"{_where(key, section, path)} is {value!r}; choose one of "
            + ", ".join(map(str, choices))
        )
    return value


def _where(key: str, section: str, path: str | os.PathLike | None) -> str:
    name = f"'{section}.{key}'" if section else f"'{key}'"
    return f"{path}: {name}" if path else name


def _to_float(value: Any) -> float | None:
    """`value` as a finite float: numbers and numeric strings (YAML 1.1 reads `2e-3` as a
    string); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return out if math.isfinite(out) else None


def _range_text(minimum: float | None, maximum: float | None, strict: bool) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if strict else '>='} {minimum:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    return " and ".join(parts)


def check_number(
    value: Any,
    key: str,
    section: str,
    *,
    minimum: float | None = 0.0,
    maximum: float | None = None,
    strict: bool = False,
    path: str | os.PathLike | None = None,
    hint: str = "",
) -> float:
    """`value` as a float if it is a finite number (or numeric string such as "2e-3", which
    YAML 1.1 does not read as a number) in [`minimum`, `maximum`] (`minimum` excluded when
    `strict`; None: no bound), else an ApmError naming `path` and `section.key`.

    `hint` is appended to the message (e.g. the unit of the option)."""
    out = _to_float(value)
    ok = out is not None
    if ok and minimum is not None:
        ok = out > minimum if strict else out >= minimum
    if ok and maximum is not None:
        ok = out <= maximum
    if not ok:
        bounds = _range_text(minimum, maximum, strict)
        raise ApmError(
            f"{_where(key, section, path)} is {value!r}; it must be a number"
            + (f" {bounds}" if bounds else "")
            + (f"; {hint}" if hint else "")
        )
    return out


def check_int(
    value: Any,
    key: str,
    section: str,
    *,
    minimum: int | None = 0,
    maximum: int | None = None,
    path: str | os.PathLike | None = None,
) -> int:
    """`value` as an int if it is a whole number in [`minimum`, `maximum`] (None: no bound),
    else an ApmError naming `path` and `section.key`.

    A float with no fractional part (10.0) counts as that integer; 2.5, booleans and strings
    are refused: a count must not be rounded silently."""
    whole = (
        isinstance(value, int)
        or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    ) and not isinstance(value, bool)
    ok = whole
    if ok and minimum is not None:
        ok = value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        bounds = _range_text(minimum, maximum, False)
        raise ApmError(
            f"{_where(key, section, path)} is {value!r}; it must be an integer"
            + (f" {bounds}" if bounds else "")
        )
    return int(value)


def check_bool(
    value: Any, key: str, section: str, *, path: str | os.PathLike | None = None
) -> bool:
    """`value` if it is true or false, else an ApmError naming `path` and `section.key`."""
    if not isinstance(value, bool):
        raise ApmError(f"{_where(key, section, path)} is {value!r}; it must be true or false")
    return value
