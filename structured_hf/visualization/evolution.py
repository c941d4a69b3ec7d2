"""How the latent space evolves during training: the seed's evolution figure, an animation, schedule plots, and the
smooth-vs-stepped comparison."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation, PillowWriter

from ..schedules import Schedule
from .style import save_figure


def _pairs(width: int) -> list[tuple[int, int]]:
    return [(0, 1)] if width == 2 else [(0, 1), (0, 2), (1, 2)] if width == 3 else [(0, 1), (0, 2), (2, 3)]


def _scatter(ax, z: np.ndarray, colors: np.ndarray, pair: tuple[int, int], size: float, lim: float) -> None:
    ax.set_facecolor("#f4f4f4")
    ax.scatter(z[:, pair[0]], z[:, pair[1]], c=np.clip(colors, 0, 1), s=size, edgecolors="none")
    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, ls="--", lw=0.6, color="#999999"))
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")


def plot_latent_evolution(
    snapshots: Sequence[np.ndarray],
    steps: Sequence[int],
    colors: np.ndarray,
    path: str | Path,
    title: str = "",
    thumbnails: int = 10,
) -> Path:
    """Three large axis-pair scatter plots of the final latents, and a strip of thumbnails (axes 0-1) from earlier
    snapshots, each point in its true color."""
    final = snapshots[-1]
    pairs = _pairs(final.shape[1])
    # Big panels scaled to the final latents, thumbnails each to their own (early latents can be far larger).
    lim = max(1.1, float(np.abs(final).max()) * 1.05)
    fig = plt.figure(figsize=(15, 6.4), layout="constrained")
    grid = fig.add_gridspec(2, max(thumbnails, 1), height_ratios=[3.0, 1.0])
    span = thumbnails // len(pairs)
    for k, pair in enumerate(pairs):
        ax = fig.add_subplot(grid[0, k * span : (k + 1) * span])
        _scatter(ax, final, colors, pair, 16, lim)
        ax.set_xlabel(f"axis {pair[0]}")
        ax.set_ylabel(f"axis {pair[1]}")
        ax.set_title(f"step {steps[-1]}: axes {pair[0]}-{pair[1]}", fontsize=10)
    picks = np.unique(np.linspace(0, len(snapshots) - 1, thumbnails).round().astype(int))
    for k, i in enumerate(picks):
        ax = fig.add_subplot(grid[1, k])
        _scatter(ax, snapshots[i], colors, (0, 1), 3, max(1.1, float(np.abs(snapshots[i][:, :2]).max()) * 1.05))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"step {steps[i]}", fontsize=8)
    fig.suptitle(title or "latent evolution (bottom: axes 0-1 over training)")
    path = Path(path)
    fig.savefig(path, dpi=100, facecolor="white")
    plt.close(fig)
    return path


def plot_schedules(
    schedules: Mapping[str, Schedule],
    max_steps: int,
    path: str | Path,
    phases: Sequence[tuple[float, str]] = (),
    title: str = "schedules",
) -> Path:
    """Every keyframed parameter over the run (log scale for the learning rate), phase starts as vertical lines."""
    steps = np.arange(max_steps + 1)
    names = list(schedules)
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 1.6 * len(names) + 0.8), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        ax.plot(steps, [schedules[name](s) for s in steps], color="black")
        ax.set_ylabel(name, rotation=0, ha="right", fontsize=9)
        if name == "learning_rate" and min(schedules[name].values) > 0:
            ax.set_yscale("log")
        for start, label in phases:
            ax.axvline(start, color="#cc5500", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    for start, label in phases:
        axes[0, 0].text(start, 1.02, label, transform=axes[0, 0].get_xaxis_transform(), fontsize=8, color="#cc5500")
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title)
    return save_figure(fig, path, dpi=110)


def animate_latent_evolution(
    snapshots: Sequence[np.ndarray],
    steps: Sequence[int],
    colors: np.ndarray,
    path: str | Path,
    schedules: Mapping[str, Schedule] | None = None,
    fps: int = 6,
) -> Path:
    """GIF: the latent scatter (axes 0-1) next to the schedules, with a cursor at the current step."""
    lim = max(1.1, float(np.abs(np.concatenate(snapshots)).max()) * 1.05)
    fig, (ax_z, ax_s) = plt.subplots(1, 2, figsize=(9, 4.2), gridspec_kw={"width_ratios": [1, 1.3]})
    _scatter(ax_z, snapshots[0], colors, (0, 1), 10, lim)
    scat = ax_z.collections[0]
    grid = np.arange(0, steps[-1] + 1)
    for name, schedule in (schedules or {}).items():
        values = np.asarray([schedule(s) for s in grid])
        peak = np.abs(values).max() or 1.0
        ax_s.plot(grid, values / peak, label=f"{name} (max {peak:.2g})")
    if schedules:
        ax_s.legend(fontsize=7, loc="upper right")
    ax_s.set_title("schedules (each scaled to its max)", fontsize=9)
    ax_s.set_xlabel("step")
    cursor = ax_s.axvline(0, color="black")

    def frame(i: int):
        scat.set_offsets(snapshots[i][:, :2])
        cursor.set_xdata([steps[i], steps[i]])
        ax_z.set_title(f"latents, axes 0-1, step {steps[i]}", fontsize=9)
        return scat, cursor

    anim = FuncAnimation(fig, frame, frames=len(snapshots), blit=False)
    path = Path(path)
    anim.save(path, writer=PillowWriter(fps=fps), dpi=70)
    plt.close(fig)
    return path


def plot_run_comparison(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    boundaries: Mapping[str, Sequence[float]] | None = None,
    key: str = "loss",
    title: str = "",
) -> Path:
    """Loss curves of several runs on one log-scale axis, with each run's phase starts marked."""
    fig, ax = plt.subplots(figsize=(10, 4))
    for k, (label, history) in enumerate(histories.items()):
        rows = [(r["step"], r[key]) for r in history if key in r and r[key] > 0]
        (line,) = ax.plot(*zip(*rows), label=label, lw=1.2)
        for b in (boundaries or {}).get(label, []):
            ax.axvline(b, color=line.get_color(), ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(title or f"{key} per run (dotted: phase starts)")
    return save_figure(fig, path, dpi=110)
