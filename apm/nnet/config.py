"""Config sections for the network and the loss: defaults plus a typo check."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from apm.utils.errors import ApmError


def resolve_config(
    cfg: Mapping[str, Any] | None, defaults: Mapping[str, Any], section: str
) -> dict[str, Any]:
    """Return `defaults` updated with `cfg`; a key not in `defaults` is an ApmError.

    A misspelt YAML key would otherwise be silently ignored and the run would train another
    system than the one the user wrote down.
    """
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ApmError(
            f"unknown key(s) {', '.join(unknown)} in the '{section}' section of the config; "
            f"valid keys: {', '.join(sorted(defaults))}"
        )
    return {**defaults, **cfg}


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
