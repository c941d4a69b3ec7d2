"""How close a color is to a concept's anchor color, and the r² scores built on it (results: docs/m2-control.md).

The reference judged an intervention by how well the damage it does follows closeness to the concept: the r² of the
Pearson correlation between per-color MSE and ``sim^p`` over an RGB grid (``p = 2`` for suppression, ``3`` for
deletion), or between MSE and ``vibrancy^p`` for deleting the whole hue plane (``p = 2.3``).
"""

from __future__ import annotations

import math

import numpy as np

from ..data.colors import hsv_similarity, hue_angle, to_hsv  # defined with the colors; re-exported here


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
