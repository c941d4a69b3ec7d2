"""The one way every figure is finished and written: title, layout, white background, PNG, figure closed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never needs a display
import matplotlib.pyplot as plt


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 110, title: str = "", tight: bool = True) -> Path:
    """Add ``title`` (if any), lay out, save ``fig`` to ``path`` on a white background and close it."""
    if title:
        fig.suptitle(title)
    if tight:
        fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)
    return path
