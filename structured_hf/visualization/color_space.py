"""Color-space figures for experiment 1.1 (seed M1.1: "ways to construct and visualize color spaces such as RGB and
HSV"): the RGB cube seen from three sides, and slices through HSV.

The 12 named hues and 5 grays of the evaluation (``NAMED_COLORS``) are marked in both, so the figures double as a map of
what the color models are tested on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..data.colors import GRAY_NAMES, HUE_NAMES, NAMED_COLORS, rgb_grid, to_rgb

# Corners of the cube and their names, for labels.
_CORNERS = {
    "black": (0, 0, 0),
    "red": (1, 0, 0),
    "green": (0, 1, 0),
    "blue": (0, 0, 1),
    "yellow": (1, 1, 0),
    "cyan": (0, 1, 1),
    "magenta": (1, 0, 1),
    "white": (1, 1, 1),
}
_EDGES = [
    (a, b) for a in _CORNERS.values() for b in _CORNERS.values() if sum(abs(x - y) for x, y in zip(a, b)) == 1 and a < b
]
# (title, elevation, azimuth, corner hidden behind the one in front): the cube from the white corner (the hue
# hexagon round the gray axis), from the black corner, and from the side.
CUBE_VIEWS: tuple[tuple[str, float, float, str | None], ...] = (
    ("from the white corner (black hidden behind it)", 35.3, 45.0, "black"),
    ("from the black corner (white hidden behind it)", -35.3, 225.0, "white"),
    ("from the side", 12.0, -60.0, None),
)


def plot_rgb_cube(
    path: str | Path, size: int = 8, views: Sequence[tuple[str, float, float, str | None]] = CUBE_VIEWS, title: str = ""
) -> Path:
    """The ``size³`` RGB lattice as a 3-D scatter, each point in its own color, from several viewpoints; cube edges
    and corner names drawn."""
    colors = rgb_grid(size)
    fig = plt.figure(figsize=(5.2 * len(views), 5.6), facecolor="white")
    for k, (label, elev, azim, hidden) in enumerate(views):
        ax = fig.add_subplot(1, len(views), k + 1, projection="3d")
        ax.set_facecolor("white")
        ax.scatter(
            colors[:, 0],
            colors[:, 1],
            colors[:, 2],
            c=colors,
            s=28,
            depthshade=False,
            edgecolors="#55555533",
            linewidths=0.3,
        )
        for a, b in _EDGES:
            ax.plot(*zip(a, b), color="#666666", lw=0.8)
        for name, corner in _CORNERS.items():
            if name == hidden:
                continue  # it projects onto the corner in front of it: one label there, not two on top of each other
            offset = 0.12 * (np.asarray(corner) - 0.5)
            ax.text(
                *(np.asarray(corner, dtype=float) + offset), name, fontsize=9, ha="center", va="center", color="black"
            )
        ax.view_init(elev=elev, azim=azim)
        ax.set_xlabel("R", labelpad=-8)
        ax.set_ylabel("G", labelpad=-8)
        ax.set_zlabel("B", labelpad=-8)
        ax.set_xticks([0, 1])
        ax.set_yticks([0, 1])
        ax.set_zticks([0, 1])
        ax.tick_params(labelsize=7, pad=-3)
        ax.set_box_aspect((1, 1, 1))
        ax.set_title(label, fontsize=10)
    fig.suptitle(title or f"RGB cube, {size}³ grid", fontsize=13)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.88, wspace=0.02)
    path = Path(path)
    fig.savefig(path, dpi=110, facecolor="white")
    plt.close(fig)
    return path


def _hs_disc(value: float, resolution: int) -> np.ndarray:
    """RGBA image of the hue (angle, red at 0° counter-clockwise) x saturation (radius) disc at ``value``."""
    ax = np.linspace(-1.0, 1.0, resolution)
    x, y = np.meshgrid(ax, ax[::-1])
    r = np.hypot(x, y)
    hue = (np.arctan2(y, x) / (2 * np.pi)) % 1.0
    rgb = to_rgb(np.stack([hue.ravel(), np.clip(r, 0, 1).ravel(), np.full(r.size, value)], -1))
    image = np.ones((resolution, resolution, 4))
    image[..., :3] = rgb.reshape(resolution, resolution, 3)
    image[r > 1.0] = (1.0, 1.0, 1.0, 0.0)
    return image


def plot_hsv_slices(
    path: str | Path, values: Sequence[float] = (0.25, 0.5, 0.75, 1.0), resolution: int = 300, title: str = ""
) -> Path:
    """Top: hue x saturation discs at fixed values (hue as angle, saturation as radius), the named hues marked on
    the v = 1 disc. Bottom: hue x value at full saturation (shades, down to black) and hue x saturation at full value
    (tints, up to white), with the named hues' columns marked."""
    fig = plt.figure(figsize=(3.4 * len(values), 7.2), facecolor="white")
    top = fig.add_gridspec(1, len(values), top=0.9, bottom=0.5, wspace=0.05)
    bottom = fig.add_gridspec(1, 2, top=0.4, bottom=0.1, wspace=0.12)
    for k, v in enumerate(values):
        ax = fig.add_subplot(top[0, k])
        ax.imshow(_hs_disc(v, resolution), extent=(-1, 1, -1, 1), interpolation="bilinear")
        ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="#444444", lw=0.8))
        if v == 1.0:
            for i, name in enumerate(HUE_NAMES):
                angle = np.radians(30.0 * i)
                ax.plot(np.cos(angle), np.sin(angle), "o", ms=5, mfc="none", mec="black", mew=0.9)
                ax.text(1.2 * np.cos(angle), 1.2 * np.sin(angle), name, fontsize=8, ha="center", va="center")
        ax.set_xlim(-1.4, 1.4)
        ax.set_ylim(-1.4, 1.4)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(f"value v = {v:g}\n(angle: hue, radius: saturation)", fontsize=10)
    hues = np.linspace(0.0, 1.0, 361)
    levels = np.linspace(0.0, 1.0, 101)
    hh, ll = np.meshgrid(hues % 1.0, levels)  # 360° is red again
    strips = (
        ("shades: hue x value at s = 1 (v = 0 is black)", np.stack([hh, np.ones_like(hh), ll], -1), "value v"),
        ("tints: hue x saturation at v = 1 (s = 0 is white)", np.stack([hh, ll, np.ones_like(hh)], -1), "saturation s"),
    )
    for k, (label, hsv, ylabel) in enumerate(strips):
        ax = fig.add_subplot(bottom[0, k])
        rgb = to_rgb(hsv.reshape(-1, 3)).reshape(*hsv.shape)
        ax.imshow(rgb, extent=(0, 360, 0, 1), aspect="auto", origin="lower", interpolation="bilinear")
        ax.set_xticks(np.arange(0, 361, 30))
        ax.set_xticklabels([f"{d}°\n{n}" for d, n in zip(range(0, 361, 30), list(HUE_NAMES) + ["red"])], fontsize=7)
        ax.set_ylabel(ylabel)
        ax.set_title(label, fontsize=10)
    grays = ", ".join(f"{n} ({NAMED_COLORS[n][0]:g})" for n in GRAY_NAMES)
    fig.suptitle(title or "HSV slices", fontsize=13)
    fig.text(
        0.5,
        0.005,
        f"named test colors: the 12 hues at s = v = 1 (circles, columns) and the grays s = 0: {grays}",
        ha="center",
        fontsize=8,
        color="#333333",
    )
    path = Path(path)
    fig.savefig(path, dpi=110, facecolor="white", bbox_inches="tight")
    plt.close(fig)
    return path


__all__ = ["CUBE_VIEWS", "plot_hsv_slices", "plot_rgb_cube"]
