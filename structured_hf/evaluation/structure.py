"""Metrics that make the M1 claims checkable: hue order around the plane, planarity, unit norm, stability."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..data.colors import HUE_NAMES, NAMED_COLORS, rgb_grid


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
    return {"ok": ok, "direction": direction, "winding": float(winding),
            "min_gap_deg": float(np.degrees(np.abs(gaps).min()))}


def leak_outside(acts: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """Per row: fraction of the squared norm outside ``axes``."""
    mask = np.zeros(acts.shape[-1], dtype=bool)
    mask[list(axes)] = True
    sq = acts**2
    return sq[:, ~mask].sum(-1) / np.maximum(sq.sum(-1), 1e-12)


def color_structure(model, site: str = "encoder", plane: Sequence[int] = (0, 1)) -> dict[str, Any]:
    """Hue order and leak of the 12 hues in ``plane``, and unit-norm deviation over an 8³ grid, at ``site``."""
    from .color_metrics import site_activations

    hues = np.asarray([NAMED_COLORS[n] for n in HUE_NAMES])
    z_h = site_activations(model, hues, site)
    norms = np.linalg.norm(site_activations(model, rgb_grid(8), site), axis=-1)
    leak = leak_outside(z_h, plane) if z_h.shape[1] > len(plane) else np.zeros(len(hues))
    return {
        "site": site,
        "plane": list(plane),
        "hue_order": hue_cyclic_order(z_h[:, list(plane)]),
        "hue_plane_leak_max": float(leak.max()),
        "unit_norm_deviation_max": float(np.abs(norms - 1.0).max()),
        "unit_norm_deviation_mean": float(np.abs(norms - 1.0).mean()),
    }


def loss_spikes(history: Sequence[Mapping[str, Any]], boundaries: Sequence[float], window: int = 50,
                key: str = "loss", factor: float = 1.5) -> dict[str, Any]:
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
    return {"count": int(sum(h > factor for h in heights)), "heights": heights,
            "max_height": max(heights, default=0.0)}


def latent_jitter(snapshots: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean displacement of each point between consecutive snapshots (the same inputs each time)."""
    if len(snapshots) < 2:
        return {"mean": 0.0, "max": 0.0}
    moves = [float(np.linalg.norm(b - a, axis=-1).mean()) for a, b in zip(snapshots[:-1], snapshots[1:])]
    return {"mean": float(np.mean(moves)), "max": float(np.max(moves)), "per_interval": moves}
