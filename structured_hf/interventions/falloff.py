"""Falloffs and mappers: how strongly an intervention acts on a sample, as a function of its alignment α.

``α = clamp(cos(x, v), 0, 1)`` is how far a sample points toward the concept. A *falloff* ``g(α)`` is
the fraction of the sample's component along ``v`` that suppression removes; a *mapper* ``m(α)`` is the cosine a
sample gets after repulsion rotates it. Both are small frozen dataclasses so that an intervention serializes to JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch

from ..errors import StructuredConfigError
from ..validation import check_keys, check_number


def _number(value: Any, field_name: str, low: float | None = None, high: float | None = None) -> float:
    """A finite float within [low, high], or an error naming the field (YAML/CLI values arrive untyped)."""
    return float(check_number(field_name, value, low=low, high=high))


@dataclass(frozen=True)
class BoundedPowerFalloff:
    """``g(α) = b·((α − a)/(1 − a))^p`` for ``α > a``, else 0.

    Args:
        a: threshold: samples with ``α <= a`` are untouched. ``0 <= a < 1``.
        b: bound: the largest fraction of the concept component removed (at ``α = 1``). ``b = 1`` removes it all,
            ``b = 2`` reflects it. ``0 <= b <= 2``.
        p: power: ``p = 0`` is a step (the hard hemisphere removal with ``a = 0, b = 1``), larger ``p`` spares samples
            that point only slightly toward the concept.
    """

    a: float = 0.0
    b: float = 1.0
    p: float = 0.0
    type: ClassVar[str] = "power"

    def __post_init__(self) -> None:
        object.__setattr__(self, "a", _number(self.a, "falloff.a", 0.0, 1.0))
        if self.a >= 1.0:
            raise StructuredConfigError("falloff.a", f"expected a threshold below 1, got {self.a}")
        object.__setattr__(self, "b", _number(self.b, "falloff.b", 0.0, 2.0))
        object.__setattr__(self, "p", _number(self.p, "falloff.p", 0.0))

    def __call__(self, alpha: torch.Tensor) -> torch.Tensor:
        t = ((alpha - self.a) / (1.0 - self.a)).clamp(0.0, 1.0)
        # torch.pow(0, 0) == 1, so p = 0 is a clean step; the `where` keeps α <= a at exactly 0.
        return torch.where(alpha > self.a, self.b * t.pow(self.p), torch.zeros_like(alpha))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True)
class AngularFalloff:
    """A falloff set by the concept's angular width: samples more than ``width`` degrees from the concept are left
    bit-identical, samples inside the cone lose ``g = b·((α − cos w)/(1 − cos w))^p`` of their concept component.

    The width is the question a user asks ("red and colors close to red, but not orange"): on a hue wheel whose
    named hues sit 30° apart, ``width = 25`` reaches the colors within ~15° of red hard and stops before orange.
    ``width = 90, b = 1, p = 0`` is the hard hemisphere removal. The threshold is ``cos w`` instead of
    :class:`BoundedPowerFalloff`'s ``a``, so that widths above 90° (a threshold below 0) are expressible too.

    Args:
        width: the concept's angular half-width in degrees, ``0 < width < 180``.
        b: the fraction of the concept component removed at the concept itself (``0 <= b <= 2``).
        p: power of the ramp from the cone's edge (0) to the concept (1); ``p = 0`` is a step at the edge.
    """

    width: float = 90.0
    b: float = 1.0
    p: float = 0.0
    type: ClassVar[str] = "angular"

    def __post_init__(self) -> None:
        width = _number(self.width, "falloff.width")
        if not 0.0 < width < 180.0:
            raise StructuredConfigError(
                "falloff.width", f"expected an angle in degrees with 0 < width < 180, got {width}"
            )
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "b", _number(self.b, "falloff.b", 0.0, 2.0))
        object.__setattr__(self, "p", _number(self.p, "falloff.p", 0.0))

    @property
    def a(self) -> float:
        """The alignment threshold ``cos(width)`` (the hard-removal check reads it like the power falloff's)."""
        return 0.0 if self.width == 90.0 else math.cos(math.radians(self.width))

    def __call__(self, alpha: torch.Tensor) -> torch.Tensor:
        c = self.a
        t = ((alpha - c) / (1.0 - c)).clamp(0.0, 1.0)
        return torch.where(alpha > c, self.b * t.pow(self.p), torch.zeros_like(alpha))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True)
class LinearMapper:
    """``m(α) = a + (b − a)·α``: maps α = 0 to cosine ``a`` and α = 1 to cosine ``b`` (both in [−1, 1]).

    ``a = 0`` keeps the hemisphere boundary continuous; ``b = 0`` sends the concept itself to the equator.
    """

    a: float = 0.0
    b: float = 0.0
    type: ClassVar[str] = "linear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "a", _number(self.a, "mapper.a", -1.0, 1.0))
        object.__setattr__(self, "b", _number(self.b, "mapper.b", -1.0, 1.0))

    def __call__(self, alpha: torch.Tensor) -> torch.Tensor:
        return self.a + (self.b - self.a) * alpha

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True)
class BezierMapper:
    """A cubic Bézier curve from ``(0, a)`` to ``(1, b)`` with given end slopes, read as a function ``m(α)``.

    Control points: ``P0 = (0, a)``, ``P1 = (h0, a + s0·h0)``, ``P2 = (1 − h1, b − s1·h1)``, ``P3 = (1, b)``, where
    ``s0``/``s1`` are the start/end slopes and ``h0``/``h1`` the handle lengths along α. The curve is parametric in
    ``t``; reading it at a given α means solving ``x(t) = α``. That is done once, at construction, by bisection in
    float64 on a uniform α grid of ``table_size`` points; a call is then an O(1) linear interpolation in the table
    (error below 1e-6 for the default size with moderate slopes). ``h0, h1 >= 0`` and ``h0 + h1 <= 1`` keep
    ``x(t)`` monotone, so every α has exactly one ``t``.

    Args:
        a: cosine at α = 0 (0 for a continuous boundary).
        b: cosine at α = 1 (where the concept itself goes).
        start_slope: dm/dα at α = 0 (1: samples near the boundary are barely moved).
        end_slope: dm/dα at α = 1.
        start_handle, end_handle: handle lengths ``h0``, ``h1``; 1/3 each makes ``x(t) = t``.
        table_size: points of the lookup table.
    """

    a: float = 0.0
    b: float = 0.0
    start_slope: float = 1.0
    end_slope: float = 0.0
    start_handle: float = 1.0 / 3.0
    end_handle: float = 1.0 / 3.0
    table_size: int = 1025
    type: ClassVar[str] = "bezier"
    _table: torch.Tensor = field(init=False, repr=False, compare=False)
    _tables: dict = field(init=False, repr=False, compare=False)  # the table per (dtype, device), for the hot path

    def __post_init__(self) -> None:
        for name, low, high in (
            ("a", -1.0, 1.0),
            ("b", -1.0, 1.0),
            ("start_slope", None, None),
            ("end_slope", None, None),
            ("start_handle", 0.0, 1.0),
            ("end_handle", 0.0, 1.0),
        ):
            object.__setattr__(self, name, _number(getattr(self, name), f"mapper.{name}", low, high))
        if self.start_handle + self.end_handle > 1.0 + 1e-12:
            raise StructuredConfigError(
                "mapper.start_handle",
                f"start_handle + end_handle must be <= 1 (monotone curve), got {self.start_handle} + {self.end_handle}",
            )
        if isinstance(self.table_size, bool) or not isinstance(self.table_size, int) or self.table_size < 2:
            raise StructuredConfigError("mapper.table_size", f"expected an integer >= 2, got {self.table_size!r}")
        grid = torch.linspace(0.0, 1.0, self.table_size, dtype=torch.float64)
        object.__setattr__(self, "_table", self.exact(grid))
        object.__setattr__(self, "_tables", {})

    def _controls(self) -> tuple[tuple[float, float], ...]:
        h0, h1 = self.start_handle, self.end_handle
        return (
            (0.0, self.a),
            (h0, self.a + self.start_slope * h0),
            (1.0 - h1, self.b - self.end_slope * h1),
            (1.0, self.b),
        )

    def point(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The curve at parameter ``t``: ``(x(t), y(t))``."""
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = self._controls()
        u = 1.0 - t
        w0, w1, w2, w3 = u**3, 3 * u**2 * t, 3 * u * t**2, t**3
        return w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3, w0 * y0 + w1 * y1 + w2 * y2 + w3 * y3

    def exact(self, alpha: torch.Tensor, iterations: int = 60) -> torch.Tensor:
        """``m(α)`` by bisection on ``x(t) = α`` (float64; reference for the table)."""
        alpha = alpha.to(torch.float64).clamp(0.0, 1.0)
        lo, hi = torch.zeros_like(alpha), torch.ones_like(alpha)
        for _ in range(iterations):  # 60 halvings: below float64 resolution
            mid = (lo + hi) / 2
            below = self.point(mid)[0] < alpha
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return self.point((lo + hi) / 2)[1]

    def __call__(self, alpha: torch.Tensor) -> torch.Tensor:
        key = (alpha.dtype, alpha.device)
        table = self._tables.get(key)
        if table is None:
            table = self._table.to(device=alpha.device, dtype=alpha.dtype)
            if torch._C._len_torch_dispatch_stack() == 0 and not torch.is_inference_mode_enabled():
                self._tables[key] = table
        pos = alpha.clamp(0.0, 1.0) * (self.table_size - 1)
        i0 = pos.floor().long().clamp(max=self.table_size - 2)
        w = pos - i0.to(pos.dtype)
        return table[i0] * (1.0 - w) + table[i0 + 1] * w

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "a": self.a,
            "b": self.b,
            "start_slope": self.start_slope,
            "end_slope": self.end_slope,
            "start_handle": self.start_handle,
            "end_handle": self.end_handle,
            "table_size": self.table_size,
        }


FALLOFFS: dict[str, type] = {"power": BoundedPowerFalloff, "angular": AngularFalloff}
MAPPERS: dict[str, type] = {"linear": LinearMapper, "bezier": BezierMapper}


def _from_dict(registry: dict[str, type], spec: Any, field_name: str, default: str):
    if isinstance(spec, tuple(registry.values())):
        return spec
    if not isinstance(spec, dict):
        raise StructuredConfigError(field_name, f"expected a mapping like {{type: {default}, ...}}, got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("type", default)
    if kind not in registry:
        raise StructuredConfigError(f"{field_name}.type", f"unknown type {kind!r}; known: {sorted(registry)}")
    cls = registry[kind]
    allowed = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
    check_keys(field_name, spec, allowed, context=f"for {kind}")
    return cls(**spec)


def falloff_from_dict(spec: Any, field_name: str = "falloff") -> BoundedPowerFalloff:
    """``{type: power, a, b, p}`` -> falloff object (an object passes through)."""
    return _from_dict(FALLOFFS, spec, field_name, "power")


def mapper_from_dict(spec: Any, field_name: str = "mapper") -> LinearMapper | BezierMapper:
    """``{type: linear|bezier, ...}`` -> mapper object (an object passes through)."""
    return _from_dict(MAPPERS, spec, field_name, "linear")


__all__ = [
    "AngularFalloff",
    "BezierMapper",
    "BoundedPowerFalloff",
    "FALLOFFS",
    "LinearMapper",
    "MAPPERS",
    "falloff_from_dict",
    "mapper_from_dict",
]
