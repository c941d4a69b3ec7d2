"""Model families as plug-ins: one :func:`register_family` call tells the library everything it needs of a family.

A family is the unit a recipe names with ``model.type``. Its module (``structured_hf/families/<name>.py``) registers:

- ``config_class`` / ``model_class``: the transformers config and model (``models/<family>/``, pure modeling code);
- ``model_types``: the ``config.model_type`` values its saved checkpoints carry (cards and ``scripts/evaluate.py``
  find the family of a folder by them);
- ``validate``: the family's recipe checks (model and data sections), run when the recipe is loaded;
- ``build``: the model, datasets and trainer arguments of a recipe;
- ``datasets``: the training (and evaluation) datasets alone;
- ``run``: the run steps after training (evaluation, figures, metrics, the card);
- ``card``: the model-card renderer; ``evaluate``: what ``scripts/evaluate.py`` does with a checkpoint;
- ``batched_seeds``: whether seed sweeps can train many seeds as one batched model.

Nothing outside ``structured_hf/families/`` branches on a family's name: it looks the family up here. This module
imports nothing of the package, so every layer may use it.

    register_family(Family(name="my_family", config_class=MyConfig, model_class=MyModel, ...))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import StructuredConfigError


@dataclass(frozen=True)
class Family:
    """Everything the library needs of one model family (see the module docstring for each field).

    Signatures:
        validate(recipe, regularizers, routes) -> None
        build(recipe, trainer_kwargs, prepared) -> (model, train_dataset, eval_dataset); may set trainer kwargs
            (collators, processing_class) with ``setdefault``; ``prepared`` is family data built by the caller
            (a structured_gpt run passes its ``(chunks, tokenizer, blocks)``), or None.
        datasets(recipe) -> (train_dataset, eval_dataset)
        run(recipe, run_state, figures=..., animation=...) -> metrics
        card(folder, repo_or_path, *, include_code, dataset_ids) -> ModelCard | None
        evaluate(model_path, args) -> exit code
    """

    name: str
    config_class: type | None
    model_class: type | None
    model_types: tuple[str, ...] = ()
    validate: Callable[..., None] | None = None
    build: Callable[..., tuple[Any, Any, Any]] | None = None
    datasets: Callable[..., tuple[Any, Any]] | None = None
    run: Callable[..., dict[str, Any]] | None = None
    card: Callable[..., Any] | None = None
    evaluate: Callable[..., int] | None = None
    batched_seeds: bool = False
    # Checkpoints of other model types this family handles (models users bring: any architecture with a layout).
    claims: Callable[[str], bool] | None = None
    # False when the model config cannot be built while loading a recipe (a pretrained model's config may be on
    # the Hub); `make_config` builds it from the recipe when the generic dataclass config does not apply.
    config_at_load: bool = True
    make_config: Callable[..., Any] | None = None
    description: str = ""
    extras: Mapping[str, Any] = field(default_factory=dict)  # family-specific defaults other tools may read


FAMILIES: dict[str, Family] = {}
# recipe model.type -> (config class, model class): the older view of the registry, kept for callers that use it.
MODEL_TYPES: dict[str, tuple[Any, Any]] = {}


def register_family(family: Family) -> Family:
    """Register (or replace) a family under ``family.name``; returns it."""
    if not family.name or not isinstance(family.name, str):
        raise ValueError(f"a family needs a name, got {family.name!r}")
    FAMILIES[family.name] = family
    MODEL_TYPES[family.name] = (family.config_class, family.model_class)
    return family


def get_family(name: Any, field_name: str = "model.type") -> Family:
    """The family a recipe names; a clear error listing the known ones otherwise."""
    if not isinstance(name, str) or name not in FAMILIES:  # a list or mapping is unhashable, not just unknown
        raise StructuredConfigError(field_name, f"unknown model type {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_for_model_type(model_type: str | None) -> Family | None:
    """The family whose checkpoints carry ``config.model_type == model_type`` (None when no family claims it)."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    for family in FAMILIES.values():
        if family.claims is not None and model_type is not None and family.claims(model_type):
            return family
    return None
