"""Swatch grids: each named color as the model reconstructs it, one column per variant, next to the true color."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from .style import save_figure


def plot_swatch_grid(
    names: Sequence[str],
    true_colors: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    path: str | Path,
    title: str = "",
) -> Path:
    """Rows: colors; first column the true color, then one column per variant, each cell labelled with its MSE.

    Args:
        names: row labels (N).
        true_colors: (N, 3) RGB.
        predictions: ``{variant: (N, 3) RGB}``, in column order.
    """
    true_colors = np.clip(np.asarray(true_colors, dtype=float), 0, 1)
    columns = [("true", true_colors)] + [(k, np.clip(np.asarray(v, dtype=float), 0, 1)) for k, v in predictions.items()]
    n_rows, n_cols = len(names), len(columns)
    fig, ax = plt.subplots(figsize=(1.6 + 1.25 * n_cols, 0.9 + 0.36 * n_rows))
    for j, (label, colors) in enumerate(columns):
        for i, name in enumerate(names):
            y = n_rows - 1 - i
            ax.add_patch(Rectangle((j + 0.06, y + 0.08), 0.88, 0.84, facecolor=colors[i], edgecolor="#888888", lw=0.5))
            if j > 0:
                mse = float(((colors[i] - true_colors[i]) ** 2).mean())
                # Dark text on light swatches, light text on dark ones (luma of the cell).
                luma = 0.299 * colors[i][0] + 0.587 * colors[i][1] + 0.114 * colors[i][2]
                ax.text(
                    j + 0.5,
                    y + 0.5,
                    f"{mse:.3f}" if mse >= 1e-3 else f"{mse:.0e}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if luma > 0.5 else "white",
                )
        ax.text(j + 0.5, n_rows + 0.15, label, ha="center", va="bottom", fontsize=8, rotation=20)
    for i, name in enumerate(names):
        ax.text(-0.08, n_rows - 1 - i + 0.5, name, ha="right", va="center", fontsize=8)
    ax.set_xlim(-1.3, n_cols)
    ax.set_ylim(0, n_rows + 1.1)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path, dpi=120)


__all__ = ["plot_swatch_grid"]
