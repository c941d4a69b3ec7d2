"""Figures (matplotlib, PNG, light background)."""

from .curves import plot_training_curves
from .evaluation_plots import plot_error_vs_similarity, plot_variant_latents
from .evolution import animate_latent_evolution, plot_latent_evolution, plot_run_comparison, plot_schedules
from .latents import axis_pairs, plot_color_model_latents, plot_latent_pairs
from .swatches import plot_swatch_grid

__all__ = [
    "animate_latent_evolution", "axis_pairs", "plot_color_model_latents", "plot_error_vs_similarity",
    "plot_latent_evolution", "plot_latent_pairs", "plot_run_comparison", "plot_schedules", "plot_swatch_grid",
    "plot_training_curves", "plot_variant_latents",
]
