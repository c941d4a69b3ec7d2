"""Models users bring (Llama family, GPT-2, GPT-NeoX): anchored fine-tuning, full or LoRA, of a pretrained causal
LM with sites attached by its architecture's layout (``structured_hf/layouts/``)."""

from __future__ import annotations

from functools import partial
from typing import Any

from transformers import PreTrainedConfig

from ..experiment import train_and_save
from ..layouts import supported_model_types
from ..pretrained.experiment import run_pretrained_experiment
from ..pretrained.recipe import (
    PretrainedCausalLM,
    build_pretrained_parts,
    pretrained_config,
    pretrained_datasets,
    validate_pretrained_recipe,
)
from ..registry import Family, register_family
from ..training.recipe import Recipe
from ..training.speclist import used_labels
from .structured_gpt import evaluate as evaluate_language


def validate(recipe: Recipe, regularizers: list, routes: list) -> None:
    validate_pretrained_recipe(recipe.model, recipe.data, regularizers, routes)


def build(recipe: Recipe, trainer_kwargs: dict[str, Any], prepared: Any = None):
    regularizers = list(recipe.specs.regularizers)
    model, train_ds, eval_ds, extra = build_pretrained_parts(
        recipe.model, recipe.data, regularizers, used_labels(regularizers, recipe.specs.routes)
    )
    for key, value in extra.items():
        trainer_kwargs.setdefault(key, value)
    return model, train_ds, eval_ds


FAMILY = register_family(
    Family(
        name="pretrained",
        config_class=PreTrainedConfig,
        model_class=PretrainedCausalLM,
        validate=validate,
        build=build,
        datasets=lambda recipe: pretrained_datasets(recipe.model, recipe.data),
        run=partial(run_pretrained_experiment, train_and_save=train_and_save),
        evaluate=evaluate_language,
        claims=lambda model_type: model_type in supported_model_types(),
        config_at_load=False,
        make_config=lambda recipe: pretrained_config(recipe.model),
        description="a pretrained causal LM users bring (Llama family, GPT-2, GPT-NeoX), full fine-tuning or LoRA",
        extras={"evaluates_into_model_folder": True},
    )
)
