"""Field checks shared by every parser of user input (recipes, concept maps, labelers, interventions, schedules).

One mechanism instead of hand-written checks per parser: each helper takes the dotted field path it is checking and
raises :class:`~structured_hf.errors.StructuredConfigError` naming that path, the offending value and what was
expected. Parsers call them and keep only the checks that are specific to their meaning.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import StructuredConfigError, yaml_float_hint


def check_mapping(field: str, value: Any, expected: str = "a mapping") -> Mapping[str, Any]:
    """``value`` itself, which must be a mapping (``expected`` describes it in the error: "a mapping with ...")."""
    if not isinstance(value, Mapping):
        raise StructuredConfigError(field, f"expected {expected}, got {value!r}")
    return value


def check_keys(
    field: str, entry: Any, allowed: Iterable[str], expected: str | None = None, context: str = "", what: str = "keys"
) -> Mapping[str, Any]:
    """``entry``, which must be a mapping whose keys are all in ``allowed``.

    Args:
        field: dotted path of the mapping, e.g. ``"regularizers[2]"``.
        entry: the parsed YAML value.
        allowed: the keys the mapping may have.
        expected: how the mapping is described when it is not one (default: "a mapping").
        context: appended to "unknown keys [...]" (e.g. "for a pretrained model"), for parsers whose allowed keys
            depend on a kind.
        what: what the keys are called in the error ("top-level keys").
    """
    allowed = set(allowed)
    check_mapping(field, entry, f"a mapping with {expected}" if expected else "a mapping")
    unknown = set(entry) - allowed
    if unknown:
        where = f" {context}" if context else ""
        raise StructuredConfigError(
            field, f"unknown {what} {sorted(unknown, key=str)}{where}; allowed: {sorted(allowed)}"
        )
    return entry


def check_number(
    field: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> float | int:
    """``value`` itself, which must be a finite number in the given range (an ``int`` when ``integer``).

    Booleans are refused although Python counts them as integers: ``true`` in YAML is never a step count or a weight.
    A string that looks like a number gets the YAML spelling that reads as one (PyYAML wants ``1.0e-3``). Messages:
    ``expected a number, got '1e-3' (str) (YAML reads ...)``, ``expected a number, got -0.1 (allowed: > 0.0)``,
    ``expected a positive integer, got 0 (allowed: >= 1)``, ``expected a non-negative number, got -1 (allowed: >= 0)``.
    """
    positive_int = integer and low == 1 and not low_open and high is None
    kind = "a positive integer" if positive_int else "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise StructuredConfigError(
            field, f"expected {kind}, got {value!r} ({type(value).__name__}){yaml_float_hint(value)}"
        )
    if not math.isfinite(value):
        raise StructuredConfigError(field, f"expected a finite number, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        bounds = [f"{'>' if low_open else '>='} {low}"] if low is not None else []
        bounds += [f"{'<' if high_open else '<='} {high}"] if high is not None else []
        noun = "integer" if integer else "number"
        named = (
            f"a non-negative {noun}"
            if low == 0 and not low_open and high is None
            else f"a positive {noun}"
            if low == 0 and low_open and high is None
            else f"{kind} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            if low is not None and high is not None
            else kind
        )
        raise StructuredConfigError(field, f"expected {named}, got {value} (allowed: {' and '.join(bounds)})")
    return value


def check_name(field: str, value: Any, what: str = "a name") -> str:
    """``value``, which must be a non-empty string (a concept, label, site or loss name)."""
    if not isinstance(value, str) or not value:
        raise StructuredConfigError(field, f"expected {what}, got {value!r}")
    return value


__all__ = ["check_keys", "check_mapping", "check_name", "check_number"]


def check_axes(field: str, value: Any) -> tuple[int, ...]:
    """A non-empty list of distinct non-negative axis indices (a concept's axes, an intervention's or a surgery's)."""
    if not isinstance(value, (list, tuple)) or not value:
        raise StructuredConfigError(field, f"expected a non-empty list of axis indices, got {value!r}")
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, int) or x < 0:
            raise StructuredConfigError(f"{field}[{i}]", f"expected a non-negative integer axis, got {x!r}")
    if len(set(value)) != len(value):
        raise StructuredConfigError(field, f"axes must be distinct, got {list(value)}")
    return tuple(int(x) for x in value)
