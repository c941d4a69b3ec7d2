"""Model families; each subpackage registers its classes with the transformers Auto classes on import."""

from .color_autoencoder import ColorAutoencoderConfig, ColorAutoencoderModel

__all__ = ["ColorAutoencoderConfig", "ColorAutoencoderModel"]
