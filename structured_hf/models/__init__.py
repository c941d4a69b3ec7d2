"""Model families; each subpackage registers its classes with the transformers Auto classes on import."""

from .color_autoencoder import ColorAutoencoderConfig, ColorAutoencoderModel
from .color_transformer import ColorTransformerConfig, ColorTransformerModel
from .structured_gpt import StructuredGPTConfig, StructuredGPTForCausalLM

__all__ = [
    "ColorAutoencoderConfig",
    "ColorAutoencoderModel",
    "ColorTransformerConfig",
    "ColorTransformerModel",
    "StructuredGPTConfig",
    "StructuredGPTForCausalLM",
]
