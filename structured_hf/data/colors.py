"""Color spaces, grids and the named test colors (RESEARCH §5).

Conversions go through scikit-image; everything here is NumPy on ``(N, 3)`` float arrays in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from skimage.color import hsv2rgb, rgb2hsv

from ..errors import StructuredConfigError

# 12 hues every 30° at s = v = 1, then 5 grays (RESEARCH §5). Order matters: it is the hue order around the wheel.
HUE_NAMES: tuple[str, ...] = (
    "red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue", "purple", "magenta", "pink",
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
    """Weights that make each *distinct* color of an HSV grid about equally likely (RESEARCH §5).

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
