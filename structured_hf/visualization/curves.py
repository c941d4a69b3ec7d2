"""Training curves from `trainer.state.log_history`: every loss term, and every scheduled parameter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .style import save_figure


def _series(history: Sequence[Mapping[str, Any]], prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = {}
    for row in history:
        for key, value in row.items():
            if key.startswith(prefix) and isinstance(value, (int, float)):
                steps, values = out.setdefault(key[len(prefix) :], ([], []))
                steps.append(row["step"])
                values.append(float(value))
    return out


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Three panels: per-term losses (log scale), regularizer/reconstruction weights, learning rate."""
    fig, (ax_terms, ax_weights, ax_lr) = plt.subplots(1, 3, figsize=(15, 4.2))
    terms, weights = _series(history, "term/"), _series(history, "weight/")
    # One color per term name in both panels, so a loss curve and its weight schedule read together.
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {name: palette[i % len(palette)] for i, name in enumerate(sorted(set(terms) | set(weights)))}
    for name, (steps, values) in terms.items():
        positive = [(s, v) for s, v in zip(steps, values) if v > 0]
        if positive:
            ax_terms.plot(*zip(*positive), label=name, color=color[name])
    ax_terms.set_yscale("log")
    ax_terms.set_title("loss terms (unweighted)")
    for name, (steps, values) in weights.items():
        if name == "reconstruction" and len(set(values)) == 1:
            continue  # a constant 1 would flatten every other schedule
        ax_weights.plot(steps, values, label=name, color=color[name])
    ax_weights.set_title("weights (schedules; constant reconstruction weight not shown)")
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
    return save_figure(fig, path, dpi=120, title=title)


def plot_concept_tracking(history: Sequence[tuple[int, Mapping[str, Any]]], path: str | Path, title: str = "") -> Path:
    """How each direction concept's cosine (red-involving tokens) and share (far-from-red tokens) evolve at every
    residual site during training; anchored sites drawn solid, the others dashed."""
    fig, (ax_cos, ax_share) = plt.subplots(1, 2, figsize=(12, 4.2))
    steps = [step for step, _ in history]
    if history:
        for concept, per_site in history[-1][1].items():
            for site, info in per_site.items():
                style = "-" if info["anchored"] else "--"
                label = f"{concept} @ {site}{' (anchored)' if info['anchored'] else ''}"
                ax_cos.plot(steps, [h[concept][site]["cosine_red"] for _, h in history], style, label=label)
                ax_share.plot(steps, [h[concept][site]["share_far"] for _, h in history], style, label=label)
    ax_cos.set_title("cosine with the concept direction (red-involving examples)")
    ax_share.set_title("share of squared norm along it (far-from-red examples)")
    ax_cos.axhline(0.95, color="#999999", lw=0.8, ls=":")
    for ax in (ax_cos, ax_share):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax_cos.legend(fontsize=7)
    return save_figure(fig, path, dpi=110, title=title)
