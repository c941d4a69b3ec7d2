"""How close a color is to a concept's anchor color, and the r² scores built on it (RESEARCH §8).

The reference judged an intervention by how well the damage it does follows closeness to the concept: the r² of the
Pearson correlation between per-color MSE and ``sim^p`` over an RGB grid (``p = 2`` for suppression, ``3`` for
deletion), or between MSE and ``vibrancy^p`` for deleting the whole hue plane (``p = 2.3``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..data.colors import resolve_colors, to_hsv


def hue_angle(rgb: np.ndarray, anchor_rgb: Sequence[float] | str) -> np.ndarray:
    """Hue difference in degrees, in [0, 180], between each color (N, 3) and the anchor."""
    h = to_hsv(np.asarray(rgb, dtype=np.float64).reshape(-1, 3))[:, 0]
    ha = to_hsv(resolve_colors([anchor_rgb]))[0, 0]
    d = np.abs(h - ha) % 1.0
    return np.minimum(d, 1.0 - d) * 360.0


def hsv_similarity(rgb: np.ndarray, anchor_rgb: Sequence[float] | str) -> np.ndarray:
    """RESEARCH §8: ``sim = (r·hue_sim + 1 − r)(1 − |s1 − s2|)(1 − |v1 − v2|)``, in [0, 1].

    ``hue_sim = max(0, (90° − θ)/90°)`` (hemisphere, angular) for hue difference θ, and ``r = (s1v1 + s2v2)/2``
    weighs the hue term by how chromatic the two colors are (hue means little for grays).

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


def vibrancy(rgb: np.ndarray) -> np.ndarray:
    """``s·v`` in HSV (the hue plane's share of a color)."""
    hsv = to_hsv(np.asarray(rgb, dtype=np.float64).reshape(-1, 3))
    return hsv[:, 1] * hsv[:, 2]


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (no correlation is defined)."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"pearson_r needs two equal-length series of >= 2 values, got {len(x)} and {len(y)}")
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum()))
    return float((xc * yc).sum() / denom) if denom > 0 else float("nan")


def r2_score(mse: np.ndarray, target: np.ndarray, power: float) -> dict[str, float]:
    """``{"pearson_r", "r2"}`` between per-color MSE and ``target^power``."""
    r = pearson_r(mse, np.power(np.asarray(target, dtype=np.float64), power))
    return {"pearson_r": r, "r2": r * r}


__all__ = ["hsv_similarity", "hue_angle", "pearson_r", "r2_score", "vibrancy"]
