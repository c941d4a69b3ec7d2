"""Color data (grids, named colors, weak labels) and the collators that turn label probabilities into labels."""

from .collators import ColumnarDataset, WeakLabelCollator, draw_labels
from .color_datasets import PROB_PREFIX, build_color_dataset, colors_from_spec
from .colors import GRAY_NAMES, HUE_NAMES, NAMED_COLORS, hsv_grid, hsv_sampling_weights, resolve_colors, rgb_grid, to_hsv, to_rgb
from .labels import FEATURES, ColorLabeler, parse_labelers

__all__ = [
    "FEATURES", "GRAY_NAMES", "HUE_NAMES", "NAMED_COLORS", "PROB_PREFIX", "ColorLabeler", "ColumnarDataset",
    "WeakLabelCollator", "build_color_dataset", "draw_labels", "colors_from_spec", "hsv_grid", "hsv_sampling_weights",
    "parse_labelers", "resolve_colors", "rgb_grid", "to_hsv", "to_rgb",
]
