"""Model cards: render a run's README.md from templates shipped inside the package.

    from structured_hf.cards import render_model_card_from_folder
    render_model_card_from_folder("outputs/default", "outputs/default").save("outputs/default/README.md")

Each model family has a renderer ``(folder, repo_or_path, *, include_code, dataset_ids) -> ModelCard | None``,
registered with its family (:func:`structured_hf.registry.register_family`) and found by the checkpoint's
``model_type`` through :data:`CARD_RENDERERS`. A folder's card reads
the concept map from the saved ``config.json`` (what the model holds now, after any surgery), the recipe and
schedules from ``recipe.yaml`` and the numbers from ``metrics.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path

from huggingface_hub import ModelCard

from ..registry import FAMILIES, family_for_model_type
from .color_autoencoder import render_color_model_card
from .color_transformer import render_color_transformer_card
from .common import FIGURE_CAPTIONS, TEMPLATES, template_path
from .structured_gpt import render_structured_gpt_card

CardRenderer = Callable[..., "ModelCard | None"]


class _CardRenderers(MutableMapping):
    """``model_type -> renderer(folder, repo_or_path, *, include_code, dataset_ids) -> card | None``.

    A view of the family registry (each family registers its renderer with :func:`register_family`) plus renderers
    registered here for other model types; one registry, keyed by the checkpoint's ``config.model_type``.
    """

    def __init__(self) -> None:
        self._extra: dict[str, CardRenderer] = {}

    def _from_families(self) -> dict[str, CardRenderer]:
        return {t: f.card for f in FAMILIES.values() if f.card is not None for t in f.model_types}

    def __getitem__(self, model_type: str) -> CardRenderer:
        if model_type in self._extra:
            return self._extra[model_type]
        family = family_for_model_type(model_type)
        if family is None or family.card is None:
            raise KeyError(model_type)
        return family.card

    def __setitem__(self, model_type: str, renderer: CardRenderer) -> None:
        self._extra[model_type] = renderer

    def __delitem__(self, model_type: str) -> None:
        del self._extra[model_type]

    def __iter__(self):
        return iter({**self._from_families(), **self._extra})

    def __len__(self) -> int:
        return len({**self._from_families(), **self._extra})


CARD_RENDERERS: MutableMapping[str, CardRenderer] = _CardRenderers()


def register_card_renderer(model_type: str, renderer: CardRenderer) -> None:
    """Give a model type a card renderer (families register theirs with ``register_family``); replaces an earlier
    one."""
    CARD_RENDERERS[model_type] = renderer


def render_model_card_from_folder(
    folder: str | Path, repo_or_path: str, include_code: bool = False, dataset_ids: Sequence[str] | None = None
) -> ModelCard | None:
    """Re-render a run's model card for ``repo_or_path`` from the files in its output folder (``None`` when its
    model family has no renderer or the folder lacks what the renderer needs; the folder's README.md is kept)."""
    folder = Path(folder)
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    renderer = CARD_RENDERERS.get(model_type) if model_type is not None else None
    if renderer is None:
        return None
    return renderer(folder, repo_or_path, include_code=include_code, dataset_ids=dataset_ids)


__all__ = [
    "CARD_RENDERERS",
    "FIGURE_CAPTIONS",
    "TEMPLATES",
    "register_card_renderer",
    "render_color_model_card",
    "render_color_transformer_card",
    "render_model_card_from_folder",
    "render_structured_gpt_card",
    "template_path",
]
