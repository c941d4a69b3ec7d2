"""Smooth, re-targetable parameter transitions and reactive rules (experiment 1.4, docs/m1-experiments.md).

A :class:`SmoothParameter` follows minimum-jerk paths. Re-targeting it mid-flight starts a new quintic from the
*current* value, velocity and acceleration, so the curve stays C² continuous however often a rule fires.

A :class:`ReactiveRule` watches a logged metric and, when it crosses a threshold, re-targets a parameter.
"""

from __future__ import annotations

import dataclasses

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import StructuredConfigError
from ..validation import check_keys, check_number


def quintic_coefficients(x0: float, v0: float, a0: float, x1: float, duration: float) -> tuple[float, ...]:
    """Coefficients ``c0..c5`` in normalised time τ ∈ [0, 1] of the quintic from (x0, v0, a0) to (x1, 0, 0).

    Velocities and accelerations are per step; in τ units they scale by ``duration`` and ``duration²``. With
    ``A = x1 − c0 − c1 − c2``, ``B = −(c1 + 2c2)``, ``C = −2c2`` the end conditions x(1) = x1, x'(1) = x''(1) = 0
    give c3 = 10A − 4B + C/2, c4 = −15A + 7B − C, c5 = 6A − 3B + C/2 (from rest this is 10τ³ − 15τ⁴ + 6τ⁵).
    """
    c0, c1, c2 = x0, v0 * duration, a0 * duration * duration / 2.0
    big_a, big_b, big_c = x1 - c0 - c1 - c2, -(c1 + 2.0 * c2), -2.0 * c2
    return (
        c0,
        c1,
        c2,
        10 * big_a - 4 * big_b + big_c / 2,
        -15 * big_a + 7 * big_b - big_c,
        6 * big_a - 3 * big_b + big_c / 2,
    )


class SmoothParameter:
    """A value that moves to targets along minimum-jerk paths and can be re-targeted at any step.

    Args:
        value: initial value (at rest).
    """

    def __init__(self, value: float):
        self._coeffs = (float(value), 0.0, 0.0, 0.0, 0.0, 0.0)
        self._start = 0.0
        self._duration = 1.0
        self.target = float(value)

    @classmethod
    def in_motion(cls, value: float, velocity: float, step: float) -> SmoothParameter:
        """A parameter passing through ``value`` with slope ``velocity`` (per step) at ``step``; retarget it next."""
        p = cls(value)
        p._coeffs = (float(value), float(velocity), 0.0, 0.0, 0.0, 0.0)
        p._start, p._duration = float(step), 1.0
        return p

    def _tau(self, step: float) -> float:
        return min(max((step - self._start) / self._duration, 0.0), 1.0)

    def value(self, step: float) -> float:
        t = self._tau(step)
        c = self._coeffs
        return c[0] + t * (c[1] + t * (c[2] + t * (c[3] + t * (c[4] + t * c[5]))))

    def velocity(self, step: float) -> float:
        """d value / d step."""
        if step >= self._start + self._duration:
            return 0.0
        t = self._tau(step)
        c = self._coeffs
        return (c[1] + t * (2 * c[2] + t * (3 * c[3] + t * (4 * c[4] + t * 5 * c[5])))) / self._duration

    def acceleration(self, step: float) -> float:
        if step >= self._start + self._duration:
            return 0.0
        t = self._tau(step)
        c = self._coeffs
        return (2 * c[2] + t * (6 * c[3] + t * (12 * c[4] + t * 20 * c[5]))) / self._duration**2

    def retarget(self, target: float, step: float, duration: float) -> None:
        """Head for ``target``, arriving at rest ``duration`` steps after ``step``, from the current motion."""
        if duration <= 0:
            raise StructuredConfigError("duration", f"a transition needs a positive duration, got {duration}")
        x0, v0, a0 = self.value(step), self.velocity(step), self.acceleration(step)
        self._coeffs = quintic_coefficients(x0, v0, a0, float(target), float(duration))
        self._start, self._duration, self.target = float(step), float(duration), float(target)


_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@dataclass
class ReactiveRule:
    """When ``metric`` (a key of the training logs) satisfies ``metric <op> threshold``, move ``parameter`` to
    ``target`` over ``duration`` steps, smoothly from its current state.

    Args:
        metric: logged key, e.g. ``"term/hue-plane"`` or ``"loss"``.
        op: one of ``<``, ``<=``, ``>``, ``>=``.
        threshold: value compared with the metric.
        parameter: a regularizer name or ``reconstruction``.
        target: the new value.
        duration: steps to reach it.
        once: fire at most once (default); otherwise fire each time the condition becomes true again.
    """

    metric: str
    op: str
    threshold: float
    parameter: str
    target: float
    duration: float = 100.0
    once: bool = True
    fired_at: int | None = None
    _armed: bool = True

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], field: str) -> ReactiveRule:
        check_keys(field, entry, {"metric", "op", "threshold", "parameter", "target", "duration", "once"})
        for key in ("metric", "parameter"):
            if not isinstance(entry.get(key), str):
                raise StructuredConfigError(f"{field}.{key}", f"expected a name, got {entry.get(key)!r}")
        if entry.get("op") not in _OPS:
            raise StructuredConfigError(f"{field}.op", f"expected one of {list(_OPS)}, got {entry.get('op')!r}")
        numbers = {key: float(check_number(f"{field}.{key}", entry.get(key))) for key in ("threshold", "target")}
        numbers["duration"] = float(
            check_number(f"{field}.duration", entry.get("duration", 100.0), low=0, low_open=True)
        )
        return cls(
            metric=entry["metric"],
            op=entry["op"],
            parameter=entry["parameter"],
            once=bool(entry.get("once", True)),
            **numbers,
        )

    def to_dict(self) -> dict[str, Any]:
        """The YAML form :meth:`from_dict` reads back (without the firing state)."""
        return {
            "metric": self.metric,
            "op": self.op,
            "threshold": self.threshold,
            "parameter": self.parameter,
            "target": self.target,
            "duration": self.duration,
            "once": self.once,
        }

    def fresh(self) -> ReactiveRule:
        """This rule, not yet fired: a recipe's rules are shared by every trainer built from it, so each trainer
        fires its own copies."""
        return dataclasses.replace(self, fired_at=None, _armed=True)

    def check(self, logs: Mapping[str, float]) -> bool:
        """True when the rule should fire now (and records it)."""
        if self.metric not in logs or (self.once and self.fired_at is not None):
            return False
        hit = _OPS[self.op](float(logs[self.metric]), self.threshold)
        fire = hit and self._armed
        self._armed = not hit  # re-arm only after the condition has been false again
        return fire
