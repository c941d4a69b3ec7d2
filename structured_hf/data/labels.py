"""Weak labelers for colors (RESEARCH §4): ``p(label) = clip(scale · feature^power, 0, 1)``.

A labeler gives a *probability*; the collator draws a fresh Bernoulli label from it each time the sample is
served, so the same color is labelled on some steps only (sparse, noisy supervision).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import StructuredConfigError
from .colors import to_hsv


def _primary_ness(rgb: np.ndarray, channel: int) -> np.ndarray:
    # redness = r(1 − g/2 − b/2): 1 for pure red, 0 for anything without red or with both other channels full.
    others = [c for c in range(3) if c != channel]
    return rgb[:, channel] * (1.0 - rgb[:, others[0]] / 2.0 - rgb[:, others[1]] / 2.0)


def redness(rgb: np.ndarray) -> np.ndarray:
    return _primary_ness(rgb, 0)


def greenness(rgb: np.ndarray) -> np.ndarray:
    return _primary_ness(rgb, 1)


def blueness(rgb: np.ndarray) -> np.ndarray:
    return _primary_ness(rgb, 2)


def _secondary_ness(rgb: np.ndarray, missing: int) -> np.ndarray:
    # The primary-ness of the missing channel in the inverted color: yellowness = blueness(1 − rgb)
    # = (1 − b)(r + g)/2. 1 for pure yellow, 0.5 for red and green, 0 for blue and white, 0.25 for mid gray
    # (the same scale as redness: redness(yellow) = yellowness(red) = 0.5).
    return _primary_ness(1.0 - rgb, missing)


def yellowness(rgb: np.ndarray) -> np.ndarray:
    return _secondary_ness(rgb, 2)


def cyanness(rgb: np.ndarray) -> np.ndarray:
    return _secondary_ness(rgb, 0)


def magentaness(rgb: np.ndarray) -> np.ndarray:
    return _secondary_ness(rgb, 1)


def vibrancy(rgb: np.ndarray) -> np.ndarray:
    """``s · v`` in HSV: 1 for fully saturated bright hues, 0 for grays and black."""
    hsv = to_hsv(rgb)
    return hsv[:, 1] * hsv[:, 2]


def desaturation(rgb: np.ndarray) -> np.ndarray:
    """``1 − vibrancy``."""
    return 1.0 - vibrancy(rgb)


FEATURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "redness": redness,
    "greenness": greenness,
    "blueness": blueness,
    "yellowness": yellowness,
    "cyanness": cyanness,
    "magentaness": magentaness,
    "vibrancy": vibrancy,
    "desaturation": desaturation,
}
# Shorthands: a label named after a feature's adjective uses that feature unless told otherwise.
_DEFAULT_FEATURE = {"red": "redness", "green": "greenness", "blue": "blueness", "yellow": "yellowness",
                    "cyan": "cyanness", "magenta": "magentaness", "vibrant": "vibrancy", "desaturated": "desaturation"}


@dataclass(frozen=True)
class ColorLabeler:
    """``p = clip(scale · feature(rgb)^power, 0, 1)``.

    Args:
        name: label name, referenced by regularizers (``label: red``).
        feature: one of :data:`FEATURES`.
        scale: multiplies the powered feature; sets the label rate (0.08 for M2's red: ~82 labels in 96k draws).
        power: sharpens the feature so that only colors close to the prototype get labelled.
    """

    name: str
    feature: str
    scale: float = 1.0
    power: float = 1.0

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return np.clip(self.scale * np.power(FEATURES[self.feature](rgb), self.power), 0.0, 1.0)

    @classmethod
    def from_dict(cls, name: str, spec: Mapping[str, Any], field: str) -> ColorLabeler:
        if not isinstance(spec, Mapping):
            raise StructuredConfigError(field, f"expected a mapping with feature/scale/power, got {spec!r}")
        unknown = set(spec) - {"feature", "scale", "power"}
        if unknown:
            raise StructuredConfigError(field, f"unknown keys {sorted(unknown)}; allowed: feature, scale, power")
        feature = spec.get("feature", _DEFAULT_FEATURE.get(name))
        if feature not in FEATURES:
            raise StructuredConfigError(f"{field}.feature", f"unknown feature {feature!r}; known: {sorted(FEATURES)}")
        values = {}
        for key, default in (("scale", 1.0), ("power", 1.0)):
            value = spec.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise StructuredConfigError(
                    f"{field}.{key}",
                    f"expected a number, got {value!r} ({type(value).__name__}); write YAML floats as 1.0e-2",
                )
            if value < 0:
                raise StructuredConfigError(f"{field}.{key}", f"expected a non-negative number, got {value}")
            values[key] = float(value)
        return cls(name=name, feature=feature, **values)


def parse_labelers(spec: Mapping[str, Any] | None, field: str = "data.labels") -> dict[str, ColorLabeler]:
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise StructuredConfigError(field, f"expected a mapping of label name -> labeler, got {spec!r}")
    return {name: ColorLabeler.from_dict(name, s, f"{field}.{name}") for name, s in spec.items()}
