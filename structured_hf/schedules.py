"""Keyframed hyperparameter schedules ("dopesheets"; examples: docs/m1-experiments.md).

A schedule is a list of ``(step, value)`` keys and an interpolation used between them:

- ``step``: hold the previous key's value until the next key, then jump;
- ``linear``;
- ``log``: linear in log(value), for learning rates spanning decades (values must be > 0);
- ``smooth``: minimum-jerk ``10τ³ − 15τ⁴ + 6τ⁵``, zero velocity and acceleration at each key.

Before the first key the first value holds; after the last key the last value holds. In YAML::

    learning_rate: {interpolation: log, keys: [[0, 1.0e-8], [10, 1.0e-2], ["+740", 1.0e-1]]}
    weight: 0.1                      # a constant

A key's step may be relative: ``"+N"`` means N steps after the previous key.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import StructuredConfigError
from .validation import check_keys, check_number

INTERPOLATIONS = ("step", "linear", "log", "smooth")


def minimum_jerk(tau: float) -> float:
    """Quintic ease ``10τ³ − 15τ⁴ + 6τ⁵`` on [0, 1]: the minimum-jerk path between two states at rest."""
    return tau * tau * tau * (10.0 + tau * (-15.0 + 6.0 * tau))


@dataclass(frozen=True)
class Schedule:
    """Piecewise-interpolated curve over training steps.

    Args:
        steps: strictly increasing key steps.
        values: value at each key.
        interpolation: one of :data:`INTERPOLATIONS`.
    """

    steps: tuple[float, ...]
    values: tuple[float, ...]
    interpolation: str = "linear"

    @classmethod
    def constant(cls, value: float) -> Schedule:
        return cls((0.0,), (float(value),), "step")

    def __call__(self, step: float) -> float:
        i = bisect.bisect_right(self.steps, step)
        if i == 0:
            return self.values[0]
        if i == len(self.steps):
            return self.values[-1]
        s0, s1 = self.steps[i - 1], self.steps[i]
        v0, v1 = self.values[i - 1], self.values[i]
        tau = (step - s0) / (s1 - s0)
        if self.interpolation == "step":
            return v0
        if self.interpolation == "log":
            return math.exp(math.log(v0) + tau * (math.log(v1) - math.log(v0)))
        if self.interpolation == "smooth":
            tau = minimum_jerk(tau)
        return v0 + tau * (v1 - v0)

    @property
    def is_constant(self) -> bool:
        return len(set(self.values)) == 1

    def to_dict(self) -> dict[str, Any] | float:
        if len(self.values) == 1:
            return self.values[0]
        return {"interpolation": self.interpolation, "keys": [[s, v] for s, v in zip(self.steps, self.values)]}


def _number(value: Any, field: str) -> float:
    return float(check_number(field, value))


def parse_step(value: Any, previous: float | None, field: str) -> float:
    if isinstance(value, str) and value.startswith("+"):
        if previous is None:
            raise StructuredConfigError(field, f"the first key cannot be relative, got {value!r}")
        try:
            return previous + float(value[1:])
        except ValueError:
            raise StructuredConfigError(field, f"expected '+N' with a number N, got {value!r}") from None
    step = _number(value, field)
    if step < 0:
        raise StructuredConfigError(field, f"steps must be >= 0, got {step}")
    return step


def parse_schedule(spec: Any, field: str) -> Schedule:
    """A number, a ``Schedule``, or ``{interpolation, keys: [[step, value], ...]}`` -> :class:`Schedule`."""
    if isinstance(spec, Schedule):
        return spec
    if not isinstance(spec, Mapping):
        return Schedule.constant(_number(spec, field))
    check_keys(field, spec, {"interpolation", "keys"})
    interpolation = spec.get("interpolation", "linear")
    if interpolation not in INTERPOLATIONS:
        raise StructuredConfigError(
            f"{field}.interpolation", f"expected one of {INTERPOLATIONS}, got {interpolation!r}"
        )
    keys = spec.get("keys")
    if not isinstance(keys, Sequence) or isinstance(keys, str) or not keys:
        raise StructuredConfigError(f"{field}.keys", f"expected a non-empty list of [step, value] pairs, got {keys!r}")
    steps: list[float] = []
    values: list[float] = []
    for i, key in enumerate(keys):
        kf = f"{field}.keys[{i}]"
        if not isinstance(key, Sequence) or isinstance(key, str) or len(key) != 2:
            raise StructuredConfigError(kf, f"expected [step, value], got {key!r}")
        step = parse_step(key[0], steps[-1] if steps else None, kf)
        if steps and step <= steps[-1]:
            raise StructuredConfigError(kf, f"steps must increase, got {step} after {steps[-1]}")
        value = _number(key[1], kf)
        if interpolation == "log" and value <= 0:
            raise StructuredConfigError(kf, f"log interpolation needs values > 0, got {value}")
        steps.append(step)
        values.append(value)
    return Schedule(tuple(steps), tuple(values), interpolation)
