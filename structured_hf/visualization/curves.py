"""Training curves from `trainer.state.log_history`: every loss term, and every scheduled parameter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _series(history: Sequence[Mapping[str, Any]], prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = {}
    for row in history:
        for key, value in row.items():
            if key.startswith(prefix) and isinstance(value, (int, float)):
                steps, values = out.setdefault(key[len(prefix):], ([], []))
                steps.append(row["step"])
                values.append(float(value))
    return out


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Three panels: per-term losses (log scale), regularizer/reconstruction weights, learning rate."""
    fig, (ax_terms, ax_weights, ax_lr) = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, (steps, values) in _series(history, "term/").items():
        positive = [(s, v) for s, v in zip(steps, values) if v > 0]
        if positive:
            ax_terms.plot(*zip(*positive), label=name)
    ax_terms.set_yscale("log")
    ax_terms.set_title("loss terms (unweighted)")
    for name, (steps, values) in _series(history, "weight/").items():
        ax_weights.plot(steps, values, label=name)
    ax_weights.set_title("weights (schedules)")
    lr = [(row["step"], row["learning_rate"]) for row in history if "learning_rate" in row]
    if lr:
        ax_lr.plot(*zip(*lr), color="black")
        ax_lr.set_yscale("log")
    ax_lr.set_title("learning rate")
    for ax in (ax_terms, ax_weights, ax_lr):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120, facecolor="white")
    plt.close(fig)
    return path
