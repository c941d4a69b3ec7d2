"""Figures (matplotlib, PNG, light background)."""

from .curves import plot_training_curves
from .latents import axis_pairs, plot_color_model_latents, plot_latent_pairs

__all__ = ["axis_pairs", "plot_color_model_latents", "plot_latent_pairs", "plot_training_curves"]
