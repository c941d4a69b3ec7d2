"""Evaluation of trained models: per-color errors and concept placement."""

from .color_metrics import concept_metrics, evaluate_color_model, named_color_mse, reconstruct, site_activations

__all__ = ["concept_metrics", "evaluate_color_model", "named_color_mse", "reconstruct", "site_activations"]
