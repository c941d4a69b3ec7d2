"""Configuration of the color-operation transformer (M3)."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ...concepts import ConceptMap
from ...errors import StructuredConfigError
from ...validation import check_number
from ..layers import transformer_site_dims

NORMS = ("pre", "hypersphere")
SEQUENCE_LENGTH = 4  # [operation, operand a, operand b, result query]


@strict
class ColorTransformerConfig(PreTrainedConfig):
    r"""
    Configuration of [`ColorTransformerModel`]: a small bidirectional transformer over the 4-token sequence
    `[operation, operand a, operand b, result query]` that regresses the result color.

    Args:
        hidden_size (`int`, defaults to 64): width of the residual stream.
        num_layers (`int`, defaults to 3): number of blocks.
        num_heads (`int`, defaults to 4): attention heads (must divide `hidden_size`).
        intermediate_size (`int`, defaults to 256): MLP width.
        operations (`list[str]`): operation names, in the order of the `op_ids` the data uses.
        norm (`str`, defaults to `"pre"`): `pre` (pre-norm LayerNorm blocks) or `hypersphere` (nGPT-style: the
            residual stream is kept on the unit sphere and each block moves it by a learned step).
        layer_norm_eps (`float`, defaults to 1e-5).
        concepts (`list[dict]`, *optional*): the concept map; sites are `layers.{i}.residual_pre`,
            `layers.{i}.residual_mid`, `layers.{i}.residual_post`, `layers.{i}.attn.q`, `layers.{i}.attn.k`, all of
            width `hidden_size`.
    """

    model_type = "structured_color_transformer"

    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256
    operations: list | None = None
    norm: str = "pre"
    layer_norm_eps: float = 1e-5
    concepts: list | None = None

    def __post_init__(self, **kwargs: Any):
        self.concepts = [] if self.concepts is None else self.concepts
        self.operations = ["mix", "complement", "rotate", "lighten"] if self.operations is None else self.operations
        super().__post_init__(**kwargs)

    def site_dims(self) -> dict[str, int]:
        return transformer_site_dims(self.num_layers, self.hidden_size)

    def validate_architecture(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            value = getattr(self, name)
            check_number(f"model.{name}", value, low=1, integer=True)
        if self.hidden_size % self.num_heads:
            raise StructuredConfigError(
                "model.num_heads", f"{self.num_heads} heads do not divide hidden_size {self.hidden_size}"
            )
        if self.norm not in NORMS:
            raise StructuredConfigError("model.norm", f"expected one of {NORMS}, got {self.norm!r}")
        if not isinstance(self.operations, list) or not self.operations:
            raise StructuredConfigError(
                "model.operations", f"expected a non-empty list of names, got {self.operations!r}"
            )
        ConceptMap.parse(self.concepts, "model.concepts").validate(self.site_dims())


__all__ = ["ColorTransformerConfig"]
