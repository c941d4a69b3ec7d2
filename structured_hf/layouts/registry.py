"""The layout registry: ``config.model_type`` -> :class:`~structured_hf.layouts.base.Layout`."""

from __future__ import annotations

from typing import Any

from ..errors import StructuredConfigError
from .base import Layout

_LAYOUTS: dict[str, Layout] = {}


def register_layout(layout: Layout) -> Layout:
    """Make :func:`structured_hf.attach_sites` support every ``model_type`` in ``layout.model_types``."""
    for model_type in layout.model_types:
        _LAYOUTS[model_type] = layout
    return layout


def supported_model_types() -> list[str]:
    return sorted(_LAYOUTS)


def layout_for(config: Any) -> Layout:
    """The layout of a transformers config (or model), with a clear error naming an unsupported ``model_type``."""
    config = getattr(config, "config", config)
    model_type = getattr(config, "model_type", None)
    if model_type not in _LAYOUTS:
        raise StructuredConfigError(
            "model_type",
            f"no structured_hf layout for model_type {model_type!r}; "
            f"supported: {supported_model_types()}. Declare one with "
            "structured_hf.layouts.register_layout(Layout(...)) (see docs/pretrained.md)",
        )
    return _LAYOUTS[model_type]


__all__ = ["layout_for", "register_layout", "supported_model_types"]
