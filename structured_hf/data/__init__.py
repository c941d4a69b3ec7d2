"""Color data (grids, named colors, weak labels), text data (corpora, chunks, weak text labelers, BPE tokenizer) and the
collators that turn label probabilities into labels."""

from .collators import ColumnarDataset, WeakLabelCollator, draw_labels
from .color_datasets import PROB_PREFIX, build_color_dataset, colors_from_spec
from .colors import (
    GRAY_NAMES,
    HUE_NAMES,
    NAMED_COLORS,
    hsv_grid,
    hsv_sampling_weights,
    resolve_colors,
    rgb_grid,
    to_hsv,
    to_rgb,
)
from .labels import FEATURES, ColorLabeler, parse_labelers
from .text import ChunkingConfig, Document, SplitConfig, build_text_dataset, load_documents
from .text_labelers import Calibration, Combination, LabelingPipeline, TextLabeler, build_labeler
from .text_pipeline import build_labelled_dataset, load_label_config
from .tokenizer import tokenize_blocks, train_bpe_tokenizer

__all__ = [
    "FEATURES",
    "GRAY_NAMES",
    "HUE_NAMES",
    "NAMED_COLORS",
    "PROB_PREFIX",
    "ColorLabeler",
    "ColumnarDataset",
    "WeakLabelCollator",
    "build_color_dataset",
    "draw_labels",
    "colors_from_spec",
    "hsv_grid",
    "hsv_sampling_weights",
    "parse_labelers",
    "resolve_colors",
    "rgb_grid",
    "to_hsv",
    "to_rgb",
    # text (M4)
    "Calibration",
    "ChunkingConfig",
    "Combination",
    "Document",
    "LabelingPipeline",
    "SplitConfig",
    "TextLabeler",
    "build_labeler",
    "build_labelled_dataset",
    "build_text_dataset",
    "load_documents",
    "load_label_config",
    "tokenize_blocks",
    "train_bpe_tokenizer",
]
