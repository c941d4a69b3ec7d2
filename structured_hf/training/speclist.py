"""Parsing of a recipe's lists of named specs (regularizers, routes): one place for the list and name checks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..errors import StructuredConfigError

T = TypeVar("T")


def parse_spec_list(entries: Any, field_name: str, from_dict: Callable[[Any, str], T], kind: str) -> list[T]:
    """``[from_dict(entry, "<field>[i]") ...]`` for a YAML list (``None``: empty), with unique ``.name``s.

    Names must be unique because logs, schedules and reactive rules address each spec by name.
    """
    if entries is None:
        return []
    if not isinstance(entries, (list, tuple)):
        raise StructuredConfigError(field_name, f"expected a list of {kind} specs, got {type(entries).__name__}")
    specs = [from_dict(e, f"{field_name}[{i}]") for i, e in enumerate(entries)]
    names = [s.name for s in specs]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise StructuredConfigError(f"{field_name}[{i}].name", f"duplicate {kind} name '{n}'; set `name`")
    return specs


def check_entry(entry: Any, field_name: str, allowed: set[str], expected: str) -> None:
    """An entry of such a list must be a mapping with only ``allowed`` keys (``expected`` describes it)."""
    if not isinstance(entry, Mapping):
        raise StructuredConfigError(field_name, f"expected a mapping with {expected}, got {entry!r}")
    unknown = set(entry) - allowed
    if unknown:
        raise StructuredConfigError(field_name, f"unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
