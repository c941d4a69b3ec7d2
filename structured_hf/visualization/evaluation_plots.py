"""Figures of an intervention evaluation: error vs closeness to the concept, and latents after the intervention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..concepts import ConceptMap
from .latents import axis_pairs, plot_latent_pairs
from .style import save_figure


def plot_error_vs_similarity(
    colors: np.ndarray, panels: Sequence[Mapping[str, Any]], path: str | Path, title: str = ""
) -> Path:
    """One scatter per variant: per-color MSE against its score target (``sim^p`` or ``vibrancy^p``).

    Args:
        colors: (N, 3) RGB grid; each point is drawn in its own color.
        panels: dicts with ``name``, ``x`` (N, the target already raised to the power), ``mse`` (N), ``xlabel`` and
            ``r2``.
    """
    n = max(1, len(panels))
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.8 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        ax.set_facecolor("#eeeeee")
        ax.scatter(panel["x"], panel["mse"], c=np.clip(colors, 0, 1), s=14, edgecolors="#33333355", linewidths=0.3)
        r2 = panel.get("r2")
        ax.set_title(
            f"{panel['name']}\nr² = {r2:.3f}" if r2 is not None and np.isfinite(r2) else panel["name"], fontsize=9
        )
        ax.set_xlabel(panel.get("xlabel", "similarity"))
        ax.set_ylabel("MSE")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    return save_figure(fig, path, dpi=120, title=title)


def plot_variant_latents(
    latents: np.ndarray,
    colors: np.ndarray,
    path: str | Path,
    concepts: Any = None,
    highlight_names: Sequence[str] = (),
    title: str = "",
) -> Path:
    """Latents (as the decoder sees them, i.e. after the intervention) on every axis pair.

    The last ``len(highlight_names)`` rows of ``latents`` are circled and labelled (e.g. the 12 named hues).
    """
    k = len(highlight_names)
    highlight = dict(zip(highlight_names, latents[len(latents) - k :])) if k else None
    concepts = ConceptMap.parse(concepts) if concepts is not None and not isinstance(concepts, ConceptMap) else concepts
    return plot_latent_pairs(latents, colors, path, concepts=concepts, highlight=highlight, title=title)


def plot_recovery_curves(study: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Relearning curves: the concept prototype's MSE (log scale) and the retain MSE per attack step, one line per
    attacked model (from :func:`structured_hf.evaluation.relearning.relearning_study`)."""
    fig, (ax_c, ax_r) = plt.subplots(1, 2, figsize=(11, 4))
    concept_key = retain_key = None
    for name, row in study["rows"].items():
        curves = row["curves"]
        concept_key = next(iter(curves))  # the concept's probe comes first (prototype, or red-involving examples)
        retain_key = "retain" if "retain" in curves else next((k for k in list(curves)[1:]), None)
        ax_c.plot(curves[concept_key], label=name)
        if retain_key is not None:
            ax_r.plot(curves[retain_key], label=name)
    ax_c.axhline(study["attack"]["threshold"], color="black", ls="--", lw=0.8, label="threshold")
    ax_c.set_yscale("log")
    what = "prototype" if concept_key in (None, "prototype") else f"{concept_key} examples"
    ax_c.set_title(f"'{study['concept']}' {what} MSE during the attack")
    ax_r.set_yscale("log")
    ax_r.set_title(
        f"{'retain colors' if retain_key in (None, 'retain') else retain_key + ' examples'} MSE during the attack"
    )
    for ax in (ax_c, ax_r):
        ax.set_xlabel("attack step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120, title=title)


def plot_variants_latents(
    rows: Sequence[Mapping[str, Any]],
    colors: np.ndarray,
    path: str | Path,
    highlight_names: Sequence[str] = (),
    max_pairs: int = 3,
    title: str = "",
) -> Path:
    """One row per variant: its latents (as the decoder sees them) on the first ``max_pairs`` axis pairs.

    Args:
        rows: dicts with ``name``, ``latents`` (N, K) and optionally ``concepts`` (a concept map, drawn as arrows).
        colors: (N, 3) RGB of the points; the last ``len(highlight_names)`` points are circled and labelled.
    """
    k = len(highlight_names)
    fig, axes = plt.subplots(len(rows), max_pairs, figsize=(3.6 * max_pairs, 3.5 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        z = np.asarray(row["latents"])
        pairs = axis_pairs(z.shape[1], max_pairs)
        concepts = row.get("concepts")
        if concepts is not None and not isinstance(concepts, ConceptMap):
            concepts = ConceptMap.parse(concepts)
        for c, ax in enumerate(axes[r]):
            if c >= len(pairs):
                ax.axis("off")
                continue
            i, j = pairs[c]
            ax.set_facecolor("#f4f4f4")
            ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, ls="--", lw=0.8, color="#999999"))
            ax.axhline(0, color="#bbbbbb", lw=0.6, zorder=0)
            ax.axvline(0, color="#bbbbbb", lw=0.6, zorder=0)
            ax.scatter(z[:, i], z[:, j], c=np.clip(colors, 0, 1), s=9, edgecolors="#33333355", linewidths=0.3)
            for name, p in zip(highlight_names, z[len(z) - k :]):
                ax.scatter([p[i]], [p[j]], s=40, facecolors="none", edgecolors="black", linewidths=0.8)
                ax.annotate(name, (p[i], p[j]), textcoords="offset points", xytext=(3, 3), fontsize=6)
            for concept in concepts or []:
                if concept.direction is not None:
                    v = np.asarray(concept.direction) / np.linalg.norm(concept.direction)
                    if abs(v[i]) + abs(v[j]) > 1e-6:
                        ax.annotate(
                            "", xy=(v[i], v[j]), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="black", lw=1.2)
                        )
            lim = max(1.05, float(np.abs(z).max()) * 1.1)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xlabel(f"axis {i}", fontsize=8)
            ax.set_ylabel(f"axis {j}", fontsize=8)
            ax.tick_params(labelsize=7)
            if c == 0:
                ax.set_title(row["name"], fontsize=9, loc="left")
    return save_figure(fig, path, dpi=100, title=title)


__all__ = ["plot_error_vs_similarity", "plot_recovery_curves", "plot_variant_latents", "plot_variants_latents"]
