"""Configuration of StructuredGPT, the small causal language model of M4."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ...concepts import ConceptMap
from ...errors import StructuredConfigError
from ...validation import check_number
from ..layers import transformer_site_dims

NORMS = ("pre", "hypersphere")


@strict
class StructuredGPTConfig(PreTrainedConfig):
    r"""
    Configuration of [`StructuredGPTForCausalLM`], a GPT-2-style decoder with named activation sites.

    Args:
        vocab_size (`int`, defaults to 4096): tokenizer vocabulary size.
        max_position_embeddings (`int`, defaults to 256): longest sequence (learned positions).
        hidden_size (`int`, defaults to 128): residual stream width.
        num_layers (`int`, defaults to 4): decoder blocks.
        num_heads (`int`, defaults to 4): attention heads (must divide `hidden_size`).
        intermediate_size (`int`, *optional*): MLP width, `4 * hidden_size` when unset.
        norm (`str`, defaults to `"pre"`): `pre` (GPT-2 pre-LayerNorm) or `hypersphere` (nGPT-style unit-norm stream).
        dropout (`float`, defaults to 0.0): residual, embedding and attention dropout.
        layer_norm_eps (`float`, defaults to 1e-5).
        initializer_range (`float`, defaults to 0.02): std of the normal init (GPT-2's).
        concepts (`list[dict]`, *optional*): the concept map; sites `layers.{i}.residual_pre`,
            `layers.{i}.residual_mid`, `layers.{i}.residual_post`, `layers.{i}.attn.q`, `layers.{i}.attn.k`, all of
            width `hidden_size`.
    """

    model_type = "structured_gpt"
    attribute_map = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads"}

    vocab_size: int = 4096
    max_position_embeddings: int = 256
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int | None = None
    norm: str = "pre"
    dropout: float | int = 0.0
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    concepts: list | None = None

    def __post_init__(self, **kwargs: Any):
        self.concepts = [] if self.concepts is None else self.concepts
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        super().__post_init__(**kwargs)

    def site_dims(self) -> dict[str, int]:
        return transformer_site_dims(self.num_layers, self.hidden_size)

    def validate_architecture(self) -> None:
        for name in (
            "vocab_size",
            "max_position_embeddings",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
        ):
            value = getattr(self, name)
            check_number(f"model.{name}", value, low=1, integer=True)
        if self.hidden_size % self.num_heads:
            raise StructuredConfigError(
                "model.num_heads", f"{self.num_heads} heads do not divide hidden_size {self.hidden_size}"
            )
        if self.norm not in NORMS:
            raise StructuredConfigError("model.norm", f"expected one of {NORMS}, got {self.norm!r}")
        ConceptMap.parse(self.concepts, "model.concepts").validate(self.site_dims())


__all__ = ["StructuredGPTConfig"]
