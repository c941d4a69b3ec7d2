"""Experiment 1.1's color-space figures: the HSV disc is drawn with hue as angle and saturation as radius, and both
figures are written."""

from __future__ import annotations

import numpy as np
from matplotlib.image import imread

from conftest import load_script
from structured_hf.visualization.color_space import _hs_disc


def test_hs_disc_puts_hue_on_the_angle_and_saturation_on_the_radius():
    disc = _hs_disc(1.0, 101)
    assert np.allclose(disc[50, 50, :3], 1.0)  # centre: s = 0, white at v = 1
    assert np.allclose(disc[50, 100, :3], [1.0, 0.0, 0.0], atol=1e-6)  # right edge: 0° at full saturation, red
    assert np.allclose(disc[0, 50, :3], [0.5, 1.0, 0.0], atol=1e-6)  # top: 90°, lime
    assert disc[0, 0, 3] == 0.0  # outside the disc: transparent
    assert np.allclose(_hs_disc(0.5, 101)[50, 100, :3], [0.5, 0.0, 0.0], atol=1e-6)  # darker slice


def test_color_space_script_writes_both_figures(tmp_path):
    script = load_script("plot_color_spaces")
    assert script.main(["--output_dir", str(tmp_path), "--size", "3"]) == 0
    for name in ("rgb_cube.png", "hsv_slices.png"):
        image = imread(tmp_path / name)
        assert image.shape[0] > 300 and image.shape[1] > 600
        assert np.allclose(image[2, 2, :3], 1.0)  # light background
