"""Color autoencoder; importing registers it with the Auto classes (no `trust_remote_code` needed)."""

from transformers import AutoConfig, AutoModel

from .configuration_color_autoencoder import ColorAutoencoderConfig
from .modeling_color_autoencoder import ColorAutoencoderModel, ColorAutoencoderOutput

AutoConfig.register(ColorAutoencoderConfig.model_type, ColorAutoencoderConfig, exist_ok=True)
AutoModel.register(ColorAutoencoderConfig, ColorAutoencoderModel, exist_ok=True)

__all__ = ["ColorAutoencoderConfig", "ColorAutoencoderModel", "ColorAutoencoderOutput"]
