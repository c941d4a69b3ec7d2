"""Weak labelers for colors: ``p(label) = clip(scale · feature^power, 0, 1)``.

A labeler gives a *probability*; the collator draws a fresh Bernoulli label from it each time the sample is
served, so the same color is labelled on some steps only (sparse, noisy supervision).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import StructuredConfigError
from ..validation import check_keys, check_number
from .colors import hsv_similarity, parse_color, to_hsv


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
_DEFAULT_FEATURE = {
    "red": "redness",
    "green": "greenness",
    "blue": "blueness",
    "yellow": "yellowness",
    "cyan": "cyanness",
    "magenta": "magentaness",
    "vibrant": "vibrancy",
    "desaturated": "desaturation",
}


SIMILAR_TO = "similar_to"
HUE_OF = "hue_of"
_FEATURE_KEYS = {SIMILAR_TO, HUE_OF}
# The six hues that have a channel formula, by their fully saturated RGB color.
_CHANNEL_FEATURES = {
    (1.0, 0.0, 0.0): "redness",
    (1.0, 1.0, 0.0): "yellowness",
    (0.0, 1.0, 0.0): "greenness",
    (0.0, 1.0, 1.0): "cyanness",
    (0.0, 0.0, 1.0): "blueness",
    (1.0, 0.0, 1.0): "magentaness",
}


def similar_to(color: str | tuple[float, float, float]) -> Callable[[np.ndarray], np.ndarray]:
    """The feature "how close to ``color``": HSV similarity (:func:`~structured_hf.data.colors.hsv_similarity`).

    Why this shape: it is the closeness the evaluation scores interventions against (r² of MSE vs ``sim^p``), so a
    concept labelled with it is labelled by the same notion of "near X" its suppression is judged by; it is 1 at the
    color, falls linearly with hue difference to 0 at 90° (the hemisphere an angular concept owns), and with
    saturation and value differences (dark or washed-out versions count less). Any hue works, not only the six with a
    channel formula. On the hue circle ``redness`` is ``1 − θ/120°``, this is ``1 − θ/90°``: ``similar_to``'s power
    ``p`` labels about as sharply along the hue circle as a channel feature's power ``p·4/3``.
    """
    rgb = parse_color(color, SIMILAR_TO)
    return lambda colors: hsv_similarity(colors, rgb)


@dataclass(frozen=True)
class ColorLabeler:
    """``p = clip(scale · feature(rgb)^power, 0, 1)``.

    Args:
        name: label name, referenced by regularizers (``label: red``).
        feature: one of :data:`FEATURES`, or ``similar_to`` with ``color`` set.
        scale: multiplies the powered feature; sets the label rate (0.08 for M2's red: ~82 labels in 96k draws).
        power: sharpens the feature so that only colors close to the prototype get labelled.
        color: for ``feature: similar_to``, the RGB color the feature measures closeness to.
    """

    name: str
    feature: str
    scale: float = 1.0
    power: float = 1.0
    color: tuple[float, float, float] | None = None

    def feature_values(self, rgb: np.ndarray) -> np.ndarray:
        """The feature (before scale and power) of colors (N, 3)."""
        if self.feature == SIMILAR_TO:
            return hsv_similarity(rgb, self.color)
        return FEATURES[self.feature](rgb)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return np.clip(self.scale * np.power(self.feature_values(rgb), self.power), 0.0, 1.0)

    @classmethod
    def from_dict(cls, name: str, spec: Mapping[str, Any], field: str) -> ColorLabeler:
        if not isinstance(spec, Mapping):
            raise StructuredConfigError(field, f"expected a mapping with feature/scale/power, got {spec!r}")
        check_keys(field, spec, {"feature", "scale", "power"})
        feature = spec.get("feature", _DEFAULT_FEATURE.get(name))
        color = None
        if isinstance(feature, Mapping):
            feature, color = parse_feature_mapping(feature, f"{field}.feature")
        elif not isinstance(feature, str) or feature not in FEATURES:
            raise StructuredConfigError(
                f"{field}.feature",
                f"unknown feature {feature!r}; known: {sorted(FEATURES)} "
                "or {similar_to: COLOR} (a color name or an RGB triple)",
            )
        values = {}
        for key, default in (("scale", 1.0), ("power", 1.0)):
            values[key] = float(check_number(f"{field}.{key}", spec.get(key, default), low=0))
        return cls(name=name, feature=feature, color=color, **values)


def parse_feature_mapping(spec: Mapping[str, Any], field: str) -> tuple[str, tuple[float, float, float] | None]:
    """``{similar_to: COLOR}`` or ``{hue_of: COLOR}`` -> ``(feature name, color)``; errors name the field.

    ``hue_of`` is "the hue's own feature": the channel formula for the six hues that have one (``{hue_of: red}`` is
    ``redness``, exactly, so a recipe written for any color reproduces the channel recipes), HSV similarity
    (``similar_to``) for every other color. Recipes parameterised by ``concept_color`` use it.
    """
    if len(spec) != 1 or next(iter(spec)) not in _FEATURE_KEYS:
        raise StructuredConfigError(
            field, f"expected {{similar_to: COLOR}} or {{hue_of: COLOR}}, got keys {sorted(spec)}"
        )
    key = next(iter(spec))
    color = parse_color(spec[key], f"{field}.{key}")
    if key == HUE_OF and color in _CHANNEL_FEATURES:
        return _CHANNEL_FEATURES[color], None
    return SIMILAR_TO, color


def feature_function(spec: Any, field: str = "feature") -> Callable[[np.ndarray], np.ndarray]:
    """A labeler's ``feature`` entry (a name of :data:`FEATURES`, ``{similar_to: COLOR}`` or ``{hue_of: COLOR}``)
    -> its function."""
    if isinstance(spec, Mapping):
        name, color = parse_feature_mapping(spec, field)
        if color is None:
            return FEATURES[name]
        return lambda rgb: hsv_similarity(rgb, color)
    if not isinstance(spec, str) or spec not in FEATURES:
        raise StructuredConfigError(
            field, f"unknown feature {spec!r}; known: {sorted(FEATURES)} or {{similar_to: COLOR}}"
        )
    return FEATURES[spec]


def parse_labelers(spec: Mapping[str, Any] | None, field: str = "data.labels") -> dict[str, ColorLabeler]:
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise StructuredConfigError(field, f"expected a mapping of label name -> labeler, got {spec!r}")
    return {name: ColorLabeler.from_dict(name, s, f"{field}.{name}") for name, s in spec.items()}
