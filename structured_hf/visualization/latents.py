"""Latent scatter plots: every axis pair of a site, each point drawn in its own true color."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never needs a display
import matplotlib.pyplot as plt
import numpy as np

from ..concepts import ConceptMap
from ..data.colors import HUE_NAMES, NAMED_COLORS, rgb_grid
from ..sites import site_activations
from .style import save_figure


def axis_pairs(width: int, limit: int = 6) -> list[tuple[int, int]]:
    """Axis pairs to draw: all of them for K <= 4, else the first ``limit`` (axis 0 first: where anchors live)."""
    return list(itertools.combinations(range(width), 2))[:limit]


def plot_latent_pairs(
    latents: np.ndarray,
    colors: np.ndarray,
    path: str | Path,
    concepts: ConceptMap | None = None,
    highlight: dict[str, np.ndarray] | None = None,
    title: str = "",
    pairs: Sequence[tuple[int, int]] | None = None,
) -> Path:
    """Scatter ``latents`` (N, K) on each axis pair, coloured by ``colors`` (N, 3).

    Args:
        concepts: direction concepts are drawn as arrows, axes concepts named in the panel of their plane.
        highlight: ``{label: latent (K,)}`` points drawn large with a label (e.g. the 12 named hues).
    """
    pairs = list(pairs or axis_pairs(latents.shape[1]))
    cols = min(3, len(pairs))
    rows = int(np.ceil(len(pairs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows), squeeze=False)
    lim = max(1.05, float(np.abs(latents).max()) * 1.1)
    for ax, (i, j) in zip(axes.flat, pairs):
        ax.set_facecolor("#f4f4f4")
        ax.axhline(0, color="#bbbbbb", lw=0.8, zorder=0)
        ax.axvline(0, color="#bbbbbb", lw=0.8, zorder=0)
        ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, ls="--", lw=0.8, color="#999999"))
        ax.scatter(latents[:, i], latents[:, j], c=np.clip(colors, 0, 1), s=14, edgecolors="#33333355", linewidths=0.3)
        for name, z in (highlight or {}).items():
            ax.scatter([z[i]], [z[j]], s=60, facecolors="none", edgecolors="black", linewidths=1.0)
            ax.annotate(name, (z[i], z[j]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        for c in concepts or []:
            if c.direction is not None and c.site:
                v = np.asarray(c.direction) / np.linalg.norm(c.direction)
                if abs(v[i]) + abs(v[j]) > 1e-6:
                    ax.annotate(
                        "", xy=(v[i], v[j]), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="black", lw=1.5)
                    )
                    ax.text(v[i] * 1.08, v[j] * 1.08, c.name, fontsize=9, weight="bold")
            elif c.axes is not None and {i, j} <= set(c.axes):
                ax.set_title(f"plane of '{c.name}'", fontsize=9, loc="right", color="#555555")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xlabel(f"axis {i}")
        ax.set_ylabel(f"axis {j}")
    for ax in list(axes.flat)[len(pairs) :]:
        ax.axis("off")
    return save_figure(fig, path, dpi=120, title=title)


def plot_color_model_latents(model, path: str | Path, site: str = "bottleneck", title: str = "") -> Path:
    """Latents of a color model at ``site`` for an 8³ RGB grid plus the 12 named hues (circled and labelled)."""
    colors = rgb_grid(8)
    hues = np.asarray([NAMED_COLORS[n] for n in HUE_NAMES])
    latents = site_activations(model, np.concatenate([colors, hues]), site)
    highlight = dict(zip(HUE_NAMES, latents[len(colors) :]))
    concepts = ConceptMap.of(model)
    return plot_latent_pairs(
        latents,
        np.concatenate([colors, hues]),
        path,
        concepts=concepts,
        highlight=highlight,
        title=title or f"latent space at site '{site}'",
    )
