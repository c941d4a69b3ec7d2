"""Figures (matplotlib, PNG, light background)."""

from .color_space import plot_hsv_slices, plot_rgb_cube
from .curves import plot_concept_tracking, plot_training_curves
from .evaluation_plots import (
    plot_error_vs_similarity,
    plot_recovery_curves,
    plot_variant_latents,
    plot_variants_latents,
)
from .evolution import animate_latent_evolution, plot_latent_evolution, plot_run_comparison, plot_schedules
from .latents import axis_pairs, plot_color_model_latents, plot_latent_pairs
from .swatches import plot_swatch_grid

__all__ = [
    "animate_latent_evolution",
    "plot_concept_tracking",
    "axis_pairs",
    "plot_color_model_latents",
    "plot_error_vs_similarity",
    "plot_latent_evolution",
    "plot_latent_pairs",
    "plot_recovery_curves",
    "plot_run_comparison",
    "plot_schedules",
    "plot_swatch_grid",
    "plot_training_curves",
    "plot_variant_latents",
    "plot_variants_latents",
]
__all__ += ["plot_hsv_slices", "plot_rgb_cube"]
