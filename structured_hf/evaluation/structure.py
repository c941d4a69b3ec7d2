"""Metrics that make the M1 claims checkable: hue order around the plane, planarity, unit norm, stability."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..data.colors import HUE_NAMES, NAMED_COLORS, rgb_grid, to_hsv
from ..sites import site_activations


def hue_cyclic_order(points_2d: np.ndarray) -> dict[str, Any]:
    """Do the 12 named hues (in wheel order) go around the origin in order, in either direction?

    Each consecutive step (including pink -> red) must turn the same way and the turns must add up to one full
    circle; returns ``ok``, the ``direction`` (+1 counter-clockwise, -1 clockwise) and the worst ``min_gap_deg``.
    """
    angles = np.arctan2(points_2d[:, 1], points_2d[:, 0])
    gaps = np.diff(np.concatenate([angles, angles[:1]]))
    gaps = (gaps + np.pi) % (2 * np.pi) - np.pi  # each step wrapped to (-π, π]
    direction = 1 if gaps.sum() > 0 else -1
    winding = abs(gaps.sum()) / (2 * np.pi)
    ok = bool((np.sign(gaps) == direction).all() and abs(winding - 1.0) < 1e-3)
    return {
        "ok": ok,
        "direction": direction,
        "winding": float(winding),
        "min_gap_deg": float(np.degrees(np.abs(gaps).min())),
    }


def leak_outside(acts: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """Per row: fraction of the squared norm outside ``axes``."""
    mask = np.zeros(acts.shape[-1], dtype=bool)
    mask[list(axes)] = True
    sq = acts**2
    return sq[:, ~mask].sum(-1) / np.maximum(sq.sum(-1), 1e-12)


def off_plane_spread(acts: np.ndarray, colors: np.ndarray, plane: Sequence[int]) -> dict[str, Any]:
    """Do the non-hue variations (value, saturation) move colors *out of* the hue plane (seed M1.3/M1.5: "values
    balloon out into the other dimensions")?

    ``r`` is the Pearson correlation, over ``colors``, between each latent's off-plane share of squared norm and the
    color's ``1 − vibrancy`` (0 for a pure hue, 1 for black and the grays): near 1 when the duller a color is, the
    further it sits from the plane. ``share_dull`` / ``share_vivid`` are the mean off-plane shares of the colors with
    vibrancy < 0.5 and >= 0.9. ``None`` entries where undefined (no axes outside the plane, or no such colors).
    """
    hsv = to_hsv(colors)
    dullness = 1.0 - hsv[:, 1] * hsv[:, 2]
    if acts.shape[-1] <= len(plane):
        return {"r": None, "share_dull": None, "share_vivid": None}
    share = leak_outside(acts, plane)
    r = None
    if share.std() > 0 and dullness.std() > 0:
        r = float(np.corrcoef(share, dullness)[0, 1])
    dull, vivid = dullness > 0.5, dullness <= 0.1
    return {
        "r": r,
        "share_dull": float(share[dull].mean()) if dull.any() else None,
        "share_vivid": float(share[vivid].mean()) if vivid.any() else None,
    }


def color_structure(
    model, site: str = "encoder", plane: Sequence[int] = (0, 1), data_colors: np.ndarray | None = None
) -> dict[str, Any]:
    """Hue order and leak of the 12 hues in ``plane``, and unit-norm deviation over an 8³ grid, at ``site``.

    With ``data_colors`` (the colors the run trained on last, e.g. a curriculum's final phase), also the unit-norm
    deviation and :func:`off_plane_spread` over those colors, under ``"data"``: a curriculum that never shows the
    cube's interior (M1.3 ends at "all values" of the pure hues) cannot be held to the unit sphere there.
    """
    hues = np.asarray([NAMED_COLORS[n] for n in HUE_NAMES])
    z_h = site_activations(model, hues, site)
    grid = rgb_grid(8)
    z_grid = site_activations(model, grid, site)
    norms = np.linalg.norm(z_grid, axis=-1)
    leak = leak_outside(z_h, plane) if z_h.shape[1] > len(plane) else np.zeros(len(hues))
    out = {
        "site": site,
        "plane": list(plane),
        "hue_order": hue_cyclic_order(z_h[:, list(plane)]),
        "hue_plane_leak_max": float(leak.max()),
        "unit_norm_deviation_max": float(np.abs(norms - 1.0).max()),
        "unit_norm_deviation_mean": float(np.abs(norms - 1.0).mean()),
        "off_plane_spread": off_plane_spread(z_grid, grid, plane),
    }
    if data_colors is not None:
        data_colors = np.asarray(data_colors, dtype=np.float64).reshape(-1, 3)
        z_data = site_activations(model, data_colors, site)
        data_norms = np.linalg.norm(z_data, axis=-1)
        out["data"] = {
            "num_colors": len(data_colors),
            "norm_mean": float(data_norms.mean()),  # below 1: collapsed inward; above 1: blown outward
            "unit_norm_deviation_max": float(np.abs(data_norms - 1.0).max()),
            "unit_norm_deviation_mean": float(np.abs(data_norms - 1.0).mean()),
            "off_plane_spread": off_plane_spread(z_data, data_colors, plane),
        }
    return out


def loss_spikes(
    history: Sequence[Mapping[str, Any]],
    boundaries: Sequence[float],
    window: int = 50,
    key: str = "loss",
    factor: float = 1.5,
) -> dict[str, Any]:
    """Loss spikes at phase starts: for each boundary, the peak loss in the ``window`` steps after it divided by the
    median loss in the ``window`` steps before it. A spike counts when the ratio exceeds ``factor``."""
    rows = [(r["step"], r[key]) for r in history if key in r]
    if not rows:
        return {"count": 0, "heights": []}
    steps = np.asarray([s for s, _ in rows], dtype=float)
    values = np.asarray([v for _, v in rows], dtype=float)
    heights = []
    for b in boundaries:
        if b <= 0:
            continue
        before = values[(steps > b - window) & (steps <= b)]
        after = values[(steps > b) & (steps <= b + window)]
        if len(before) and len(after):
            heights.append(float(after.max() / max(np.median(before), 1e-12)))
    return {"count": int(sum(h > factor for h in heights)), "heights": heights, "max_height": max(heights, default=0.0)}


def loss_excursions(
    history: Sequence[Mapping[str, Any]], key: str = "loss", window: int = 50, factor: float = 2.0
) -> dict[str, Any]:
    """Loss spikes *anywhere* in the run, not only at phase starts: each logged value divided by the median of the
    values logged in the ``window`` steps before it. An excursion is a maximal stretch of ratios above ``factor``;
    returns their ``count``, the ``max_ratio`` and each excursion's peak as ``[step, ratio]`` (``peaks``). The
    default factor is 2 (not :func:`loss_spikes`' 1.5): step-to-step noise of a small-batch loss often exceeds 1.5.

    A smooth curriculum moves its transitions *between* phase starts, so :func:`loss_spikes` alone would miss the bumps
    it causes there; comparing smooth with stepped needs both.
    """
    rows = sorted((r["step"], r[key]) for r in history if key in r)
    if not rows:
        return {"count": 0, "max_ratio": 0.0, "peaks": []}
    steps = np.asarray([s for s, _ in rows], dtype=float)
    values = np.asarray([v for _, v in rows], dtype=float)
    ratios = np.full(len(rows), np.nan)
    for i, step in enumerate(steps):
        before = values[(steps >= step - window) & (steps < step)]
        if len(before) >= 3:
            ratios[i] = values[i] / max(float(np.median(before)), 1e-12)
    above = np.nan_to_num(ratios, nan=0.0) > factor
    peaks, i = [], 0
    while i < len(above):
        if above[i]:
            j = i
            while j + 1 < len(above) and above[j + 1]:
                j += 1
            k = i + int(np.nanargmax(ratios[i : j + 1]))
            peaks.append([int(steps[k]), float(ratios[k])])
            i = j + 1
        else:
            i += 1
    return {
        "count": len(peaks),
        "max_ratio": float(np.nanmax(ratios)) if np.isfinite(ratios).any() else 0.0,
        "peaks": peaks,
    }


def latent_jitter(snapshots: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean displacement of each point between consecutive snapshots (the same inputs each time)."""
    if len(snapshots) < 2:
        return {"mean": 0.0, "max": 0.0}
    moves = [float(np.linalg.norm(b - a, axis=-1).mean()) for a, b in zip(snapshots[:-1], snapshots[1:])]
    return {"mean": float(np.mean(moves)), "max": float(np.max(moves)), "per_interval": moves}
