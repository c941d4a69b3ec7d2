"""Evaluation of trained models: per-color errors, concept placement, interventions and surgery, relearning."""

from .color_metrics import concept_metrics, evaluate_color_model, named_color_mse, reconstruct, site_activations
from .report import draw_figures, evaluate_model
from .similarity import hsv_similarity, hue_angle, pearson_r, r2_score, vibrancy
from .tables import render_latex, render_markdown, summarize, write_report
from .variants import ScoreSpec, Variant, build_variants, default_retain_colors, default_score, evaluate_variants

__all__ = [
    "ScoreSpec",
    "Variant",
    "build_variants",
    "concept_metrics",
    "default_retain_colors",
    "default_score",
    "draw_figures",
    "evaluate_color_model",
    "evaluate_model",
    "evaluate_variants",
    "hsv_similarity",
    "hue_angle",
    "named_color_mse",
    "pearson_r",
    "r2_score",
    "reconstruct",
    "render_latex",
    "render_markdown",
    "site_activations",
    "summarize",
    "vibrancy",
    "write_report",
]
