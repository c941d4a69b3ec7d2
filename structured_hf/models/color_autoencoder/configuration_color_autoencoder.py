"""Configuration of the color autoencoder (docs/m1-experiments.md)."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ...concepts import ConceptMap
from ...errors import StructuredConfigError
from ...validation import check_number

ACTIVATIONS = ("gelu", "relu", "silu", "tanh")
OUTPUT_HEADS = ("sigmoid", "clamp")


@strict
class ColorAutoencoderConfig(PreTrainedConfig):
    r"""
    Configuration of [`ColorAutoencoderModel`]: RGB -> MLP -> K-dim bottleneck -> MLP -> RGB.

    Args:
        bottleneck_dim (`int`, defaults to 4):
            Width K of the latent bottleneck.
        hidden_dim (`int`, defaults to 16):
            Width h of the hidden layers.
        num_layers (`int`, defaults to 1):
            Number of nonlinear (Linear + activation) layers on each side of the bottleneck.
        activation (`str`, defaults to `"gelu"`):
            One of `gelu`, `relu`, `silu`, `tanh`.
        normalize_bottleneck (`bool`, defaults to `True`):
            L2-normalize the latent (site `bottleneck`); the reference work found ~10x better reconstruction with it.
        output_head (`str`, defaults to `"clamp"`):
            `sigmoid`: squash the output into [0, 1]; `clamp`: linear output while training, clamped to [0, 1] in
            eval mode (the M2 choice: no vanishing gradient near the cube's faces).
        concepts (`list[dict]`, *optional*):
            The concept map: entries `{name, site, direction | axes, prototypes?}`; sites are `encoder` (pre-norm)
            and `bottleneck` (post-norm), both of width `bottleneck_dim`.
    """

    model_type = "structured_color_autoencoder"

    bottleneck_dim: int = 4
    hidden_dim: int = 16
    num_layers: int = 1
    activation: str = "gelu"
    normalize_bottleneck: bool = True
    output_head: str = "clamp"
    concepts: list | None = None

    def __post_init__(self, **kwargs: Any):
        self.concepts = [] if self.concepts is None else self.concepts
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        """Clear errors for impossible shapes; called by `@strict` on init and on every assignment check."""
        for name in ("bottleneck_dim", "hidden_dim", "num_layers"):
            value = getattr(self, name)
            check_number(f"model.{name}", value, low=1, integer=True)
        if self.activation not in ACTIVATIONS:
            raise StructuredConfigError("model.activation", f"expected one of {ACTIVATIONS}, got {self.activation!r}")
        if self.output_head not in OUTPUT_HEADS:
            raise StructuredConfigError(
                "model.output_head", f"expected one of {OUTPUT_HEADS}, got {self.output_head!r}"
            )
        # Both sites have the bottleneck's width; the concept map must fit them.
        ConceptMap.parse(self.concepts, "model.concepts").validate(
            {"encoder": self.bottleneck_dim, "bottleneck": self.bottleneck_dim}
        )


__all__ = ["ColorAutoencoderConfig"]
