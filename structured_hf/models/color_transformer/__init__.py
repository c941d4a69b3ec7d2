"""Color-operation transformer (M3); importing registers it with the Auto classes."""

from transformers import AutoConfig, AutoModel

from .configuration_color_transformer import ColorTransformerConfig
from .modeling_color_transformer import ColorTransformerModel, ColorTransformerOutput

AutoConfig.register(ColorTransformerConfig.model_type, ColorTransformerConfig, exist_ok=True)
AutoModel.register(ColorTransformerConfig, ColorTransformerModel, exist_ok=True)

__all__ = ["ColorTransformerConfig", "ColorTransformerModel", "ColorTransformerOutput"]
