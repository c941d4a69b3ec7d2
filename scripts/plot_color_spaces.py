#!/usr/bin/env python
"""Experiment 1.1: color-space figures (RGB cube views, HSV slices), with the named test colors marked.

    python scripts/plot_color_spaces.py [--output_dir outputs/ex1.1-color-spaces] [--size 8]

Writes rgb_cube.png and hsv_slices.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from structured_hf.visualization.color_space import plot_hsv_slices, plot_rgb_cube


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="outputs/ex1.1-color-spaces", help="folder for the PNGs")
    p.add_argument("--size", type=int, default=8, help="points per axis of the RGB lattice (default 8)")
    args = p.parse_args(argv)
    if args.size < 2:
        p.error(f"--size must be >= 2, got {args.size}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in (plot_rgb_cube(out / "rgb_cube.png", size=args.size), plot_hsv_slices(out / "hsv_slices.png")):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
