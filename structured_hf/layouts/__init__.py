"""Where sites sit in third-party architectures: one module per layout, each registering itself.

    from structured_hf.layouts import layout_for
    layout_for(model.config)       # Layout(name="llama", ...), or a clear error naming the model_type

Supported: the Llama family (``llama``, ``mistral``, ``qwen2``; SmolLM is ``llama``), ``gpt2``, ``gpt_neox``.
A new architecture is one :func:`register_layout` call with a :class:`Layout` (see ``docs/pretrained.md``).
"""

from .base import FusedQKV, Layout, Proj, get_path
from .registry import layout_for, register_layout, supported_model_types
from . import gpt2, gpt_neox, llama  # noqa: E402,F401  (each registers its layout)

__all__ = ["FusedQKV", "Layout", "Proj", "get_path", "layout_for", "register_layout", "supported_model_types"]
