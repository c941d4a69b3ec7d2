"""Anchored training: arguments with regularizer specs and schedules, the Trainer subclass, callbacks."""

from .arguments import AnchoredTrainingArguments, RegularizerSpec, parse_regularizers, parse_schedules
from .callbacks import ScheduleCallback
from ..schedules import INTERPOLATIONS, Schedule, minimum_jerk, parse_schedule
from .trainer import AnchoredTrainer

__all__ = [
    "INTERPOLATIONS",
    "AnchoredTrainer",
    "AnchoredTrainingArguments",
    "RegularizerSpec",
    "Schedule",
    "ScheduleCallback",
    "minimum_jerk",
    "parse_regularizers",
    "parse_schedule",
    "parse_schedules",
]

from .recipe import MODEL_TYPES, Recipe, build_datasets, build_trainer, load_recipe, model_config, parse_recipe

__all__ += ["MODEL_TYPES", "Recipe", "build_datasets", "build_trainer", "load_recipe", "model_config", "parse_recipe"]
