"""Color spaces, grids and the named test colors.

Conversions go through scikit-image; everything here is NumPy on ``(N, 3)`` float arrays in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from skimage.color import hsv2rgb, rgb2hsv

from ..errors import StructuredConfigError

# 12 hues every 30° at s = v = 1, then 5 grays. Order matters: it is the hue order around the wheel.
HUE_NAMES: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "lime",
    "green",
    "teal",
    "cyan",
    "azure",
    "blue",
    "purple",
    "magenta",
    "pink",
)
GRAY_NAMES: tuple[str, ...] = ("black", "dark gray", "gray", "light gray", "white")


def _named_colors() -> dict[str, tuple[float, float, float]]:
    hues = np.arange(12) / 12.0
    rgb = hsv2rgb(np.stack([hues, np.ones(12), np.ones(12)], axis=-1))
    out = {name: tuple(float(round(c, 6)) for c in row) for name, row in zip(HUE_NAMES, rgb)}
    for name, v in zip(GRAY_NAMES, (0.0, 0.25, 0.5, 0.75, 1.0)):
        out[name] = (v, v, v)
    return out


NAMED_COLORS: dict[str, tuple[float, float, float]] = _named_colors()


def to_hsv(rgb: np.ndarray) -> np.ndarray:
    """RGB (N, 3) in [0, 1] -> HSV (N, 3) with hue in [0, 1)."""
    return rgb2hsv(np.asarray(rgb, dtype=np.float64).reshape(-1, 1, 3)).reshape(-1, 3)


def to_rgb(hsv: np.ndarray) -> np.ndarray:
    """HSV (N, 3) with hue in [0, 1) -> RGB (N, 3) in [0, 1]."""
    return hsv2rgb(np.asarray(hsv, dtype=np.float64).reshape(-1, 1, 3)).reshape(-1, 3)


def rgb_grid(size: int) -> np.ndarray:
    """All ``size³`` colors of an evenly spaced RGB lattice including the cube's corners, (size³, 3)."""
    if size < 2:
        raise StructuredConfigError("data.size", f"an RGB grid needs size >= 2, got {size}")
    axis = np.linspace(0.0, 1.0, size)
    r, g, b = np.meshgrid(axis, axis, axis, indexing="ij")
    return np.stack([r.ravel(), g.ravel(), b.ravel()], axis=-1)


def hsv_grid(hues: int, saturations: int, values: int) -> np.ndarray:
    """HSV lattice ``hues × saturations × values`` (hue excludes 1.0, which equals 0), returned as HSV (N, 3)."""
    for name, n in (("hues", hues), ("saturations", saturations), ("values", values)):
        if n < 1:
            raise StructuredConfigError(f"data.{name}", f"expected a positive count, got {n}")
    h = np.arange(hues) / hues
    s = np.linspace(0.0, 1.0, saturations) if saturations > 1 else np.ones(1)
    v = np.linspace(0.0, 1.0, values) if values > 1 else np.ones(1)
    hh, ss, vv = np.meshgrid(h, s, v, indexing="ij")
    return np.stack([hh.ravel(), ss.ravel(), vv.ravel()], axis=-1)


def hsv_sampling_weights(hsv: np.ndarray, hues: int, saturations: int) -> np.ndarray:
    """Weights that make each *distinct* color of an HSV grid about equally likely.

    On an HSV lattice, all ``n_h·n_s`` points with v = 0 are the same black, and the ``n_h`` points with s = 0 at a
    given v are the same gray. ``w = (1−v)/(n_s n_h) + (1−s)·v/n_h + s·v`` shrinks those duplicates so that each
    distinct color gets about the weight of one chromatic point. Normalised to sum to 1.
    """
    s, v = hsv[:, 1], hsv[:, 2]
    w = (1 - v) / (saturations * hues) + (1 - s) * v / hues + s * v
    return w / w.sum()


def resolve_colors(colors: Iterable[str | Sequence[float]], field: str = "colors") -> np.ndarray:
    """Named colors or RGB triples -> (N, 3) array; unknown names raise an error listing the known ones."""
    out = []
    for i, c in enumerate(colors):
        if isinstance(c, str):
            if c not in NAMED_COLORS:
                raise StructuredConfigError(f"{field}[{i}]", f"unknown color '{c}'; known: {list(NAMED_COLORS)}")
            out.append(NAMED_COLORS[c])
        elif isinstance(c, Sequence) and len(c) == 3 and all(isinstance(x, (int, float)) for x in c):
            out.append(tuple(float(x) for x in c))
        else:
            raise StructuredConfigError(f"{field}[{i}]", f"expected a color name or an RGB triple, got {c!r}")
    return np.asarray(out, dtype=np.float64).reshape(-1, 3)


def parse_color(value: object, field: str) -> tuple[float, float, float]:
    """One color from a recipe: a name of :data:`NAMED_COLORS` or an RGB triple with every channel in [0, 1].

    Errors name ``field`` and say what was expected (an unknown name lists the known ones).
    """
    if isinstance(value, str):
        if value not in NAMED_COLORS:
            raise StructuredConfigError(
                field, f"unknown color {value!r}; known: {list(NAMED_COLORS)} or an RGB triple such as [1.0, 0.5, 0.0]"
            )
        return NAMED_COLORS[value]
    if (
        isinstance(value, Sequence)
        and len(value) == 3
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
    ):
        if not all(0.0 <= float(x) <= 1.0 for x in value):
            raise StructuredConfigError(field, f"RGB channels must be in [0, 1], got {list(value)}")
        return tuple(float(x) for x in value)  # type: ignore[return-value]
    raise StructuredConfigError(field, f"expected a color name or an RGB triple in [0, 1], got {value!r}")


def hue_of(color: str | Sequence[float]) -> float:
    """The HSV hue of one color in degrees, [0, 360)."""
    return float(to_hsv(resolve_colors([color]))[0, 0] * 360.0)


def hue_name(hue_deg: float) -> str | None:
    """The name of the named hue at ``hue_deg`` (a multiple of 30°, within 1e-6), else ``None``."""
    k = (hue_deg % 360.0) / 30.0
    return HUE_NAMES[round(k) % 12] if abs(k - round(k)) < 1e-6 else None


def hue_color(hue_deg: float) -> tuple[float, float, float]:
    """The fully saturated, full-value RGB color of a hue in degrees (the named one when it is named)."""
    name = hue_name(hue_deg)
    if name is not None:
        return NAMED_COLORS[name]
    rgb = to_rgb(np.array([[(hue_deg % 360.0) / 360.0, 1.0, 1.0]]))[0]
    return tuple(float(c) for c in rgb)  # type: ignore[return-value]


def hue_angle(rgb: np.ndarray, anchor_rgb: Sequence[float] | str) -> np.ndarray:
    """Hue difference in degrees, in [0, 180], between each color (N, 3) and the anchor."""
    h = to_hsv(np.asarray(rgb, dtype=np.float64).reshape(-1, 3))[:, 0]
    ha = to_hsv(resolve_colors([anchor_rgb]))[0, 0]
    d = np.abs(h - ha) % 1.0
    return np.minimum(d, 1.0 - d) * 360.0


def hsv_similarity(rgb: np.ndarray, anchor_rgb: Sequence[float] | str) -> np.ndarray:
    """The reference's closeness of colors to an anchor color, in [0, 1]:
    ``sim = (r·hue_sim + 1 − r)(1 − |s1 − s2|)(1 − |v1 − v2|)``.

    ``hue_sim = max(0, (90° − θ)/90°)`` (hemisphere, angular) for hue difference θ, and ``r = (s1v1 + s2v2)/2``
    weighs the hue term by how chromatic the two colors are (hue means little for grays). The evaluation scores
    interventions against this closeness, and the ``similar_to`` labeler labels with it.

    Args:
        rgb: colors (N, 3) in [0, 1].
        anchor_rgb: the concept's color: an RGB triple or a named color.
    """
    hsv = to_hsv(np.asarray(rgb, dtype=np.float64).reshape(-1, 3))
    anchor = to_hsv(resolve_colors([anchor_rgb]))[0]
    s, v = hsv[:, 1], hsv[:, 2]
    hue_sim = np.maximum(0.0, (90.0 - hue_angle(rgb, anchor_rgb)) / 90.0)
    r = (s * v + anchor[1] * anchor[2]) / 2.0
    return (r * hue_sim + 1.0 - r) * (1.0 - np.abs(s - anchor[1])) * (1.0 - np.abs(v - anchor[2]))
