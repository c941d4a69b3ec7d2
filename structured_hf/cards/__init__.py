"""Model cards: render a run's README.md from templates shipped inside the package.

    from structured_hf.cards import render_model_card_from_folder
    render_model_card_from_folder("outputs/default", "outputs/default").save("outputs/default/README.md")

Each model family has a renderer ``(folder, repo_or_path, *, include_code, dataset_ids) -> ModelCard | None``,
registered under its ``model_type`` in :data:`CARD_RENDERERS` (:func:`register_card_renderer`). A folder's card reads
the concept map from the saved ``config.json`` (what the model holds now, after any surgery), the recipe and
schedules from ``recipe.yaml`` and the numbers from ``metrics.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from huggingface_hub import ModelCard

from . import color_autoencoder, color_transformer, structured_gpt
from .color_autoencoder import render_color_model_card
from .color_transformer import render_color_transformer_card
from .common import FIGURE_CAPTIONS, TEMPLATES, template_path
from .structured_gpt import render_structured_gpt_card

CardRenderer = Callable[..., "ModelCard | None"]

# model_type -> renderer(folder, repo_or_path, *, include_code, dataset_ids) -> card, or None when the folder lacks
# what it needs.
CARD_RENDERERS: dict[str, CardRenderer] = {
    "structured_color_autoencoder": color_autoencoder.render_from_folder,
    "structured_color_transformer": color_transformer.render_from_folder,
    "structured_gpt": structured_gpt.render_from_folder,
}


def register_card_renderer(model_type: str, renderer: CardRenderer) -> None:
    """Give a model family (by its config's ``model_type``) a card renderer; replaces an earlier one."""
    CARD_RENDERERS[model_type] = renderer


def render_model_card_from_folder(
    folder: str | Path, repo_or_path: str, include_code: bool = False, dataset_ids: Sequence[str] | None = None
) -> ModelCard | None:
    """Re-render a run's model card for ``repo_or_path`` from the files in its output folder (``None`` when its
    model family has no renderer or the folder lacks what the renderer needs; the folder's README.md is kept)."""
    folder = Path(folder)
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    renderer = CARD_RENDERERS.get(model_type)
    if renderer is None:
        return None
    return renderer(folder, repo_or_path, include_code=include_code, dataset_ids=dataset_ids)


__all__ = [
    "CARD_RENDERERS", "FIGURE_CAPTIONS", "TEMPLATES", "register_card_renderer", "render_color_model_card",
    "render_color_transformer_card", "render_model_card_from_folder", "render_structured_gpt_card", "template_path",
]
