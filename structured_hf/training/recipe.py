"""A YAML experiment file is the whole recipe: model (with concept map), data, labels, regularizers, schedules and
training arguments. This module loads it with clear errors and builds the model, datasets and trainer from it.

Layout::

    seed: 0
    model: {type: color_autoencoder, bottleneck_dim: 4, ..., concepts: [...]}
    data: {train: {grid: rgb, size: 8}, eval: {...}, labels: {red: {scale: 0.08, power: 8.0}}, eval_labels: {...}}
    regularizers: [{loss: angular_anchor, concept: red, label: red, weight: ...}, ...]
    routes: [{concept: red-axis, label: red}]   # optional gradient routing (training/routing.py)
    schedules: {learning_rate: {...}, reconstruction: 1.0}
    training: {max_steps: 1501, per_device_train_batch_size: 64, ...}   # any TrainingArguments field
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import yaml
from transformers import set_seed

from ..data.color_tasks import build_color_task_splits
from ..data.curriculum import Curriculum
from ..data.labels import parse_labelers
from ..data.lm_data import LMDataSpec, build_lm_data
from ..errors import StructuredConfigError
from ..validation import check_keys, check_number
from ..registry import MODEL_TYPES, Family, get_family  # noqa: F401  (MODEL_TYPES: re-exported)
from ..models.structured_gpt import StructuredGPTConfig
from ..concepts import ConceptMap
from ..schedules import Schedule
from .arguments import (
    AnchoredTrainingArguments,
    RegularizerSpec,
    check_spec_names,
    parse_reactive,
    parse_regularizers,
    parse_schedules,
)
from .concept_color import expand_concept_color
from .distill import DistillationTrainer, DistillSpec, load_teacher
from .isolation import IsolatedTrainer, IsolationSpec, check_isolation_label
from .routing import RouteSpec, parse_routes
from .transitions import ReactiveRule
from .speclist import used_labels
from .sweep_spec import parse_sweep, set_path
from .trainer import AnchoredTrainer

_TOP_KEYS = {
    "seed",
    "model",
    "data",
    "regularizers",
    "routes",
    "schedules",
    "reactive",
    "training",
    "output_dir",
    "description",
    "sweep",
    "distill",
    "isolation",
}
_DATA_KEYS = {"train", "eval", "labels", "eval_labels", "curriculum", "task"}


@dataclass(frozen=True)
class RecipeSpecs:
    """The typed form of a recipe's anchoring sections, parsed once when the recipe is made.

    Everything downstream (training arguments, trainer, batched sweeps, model cards) reads these; the YAML dicts of
    :class:`Recipe` are kept only to save the recipe as it was written (``recipe.yaml``) and to derive sweep variants.
    """

    regularizers: tuple[RegularizerSpec, ...]
    routes: tuple[RouteSpec, ...]
    schedules: Mapping[str, Schedule]
    reactive: tuple[ReactiveRule, ...]
    concepts: ConceptMap  # the recipe's ``model.concepts`` (checked against the model's sites when it is built)
    distill: DistillSpec | None
    isolation: IsolationSpec | None

    @classmethod
    def parse(cls, recipe: Recipe) -> RecipeSpecs:
        regularizers = tuple(parse_regularizers(recipe.regularizers))
        routes = tuple(parse_routes(recipe.routes))
        reactive = tuple(parse_reactive(recipe.reactive))
        check_spec_names(regularizers, routes, reactive)
        return cls(
            regularizers=regularizers,
            routes=routes,
            schedules=parse_schedules(recipe.schedules),
            reactive=reactive,
            concepts=ConceptMap.parse(recipe.model.get("concepts"), "model.concepts"),
            distill=None if recipe.distill is None else DistillSpec.from_dict(recipe.distill),
            isolation=None if recipe.isolation is None else IsolationSpec.from_dict(recipe.isolation),
        )


@dataclass
class Recipe:
    """A parsed experiment file: the sections as written (``to_yaml`` saves them) and their typed form, ``specs``.

    ``specs`` is parsed when the recipe is made (so errors surface at load) and kept; it is parsed again only if
    the sections it comes from were changed since (``recipe.regularizers.append(...)`` is fine).
    """

    model: dict[str, Any]
    data: dict[str, Any]
    regularizers: list[dict[str, Any]] = field(default_factory=list)
    routes: list[dict[str, Any]] = field(default_factory=list)
    schedules: dict[str, Any] = field(default_factory=dict)
    reactive: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    output_dir: str = "outputs/run"
    description: str = ""
    # Many runs of this recipe (variants, regularizer subsets, seeds): see `structured_hf.training.sweep`. Training the
    # recipe itself ignores it; `scripts/sweep.py` expands it.
    sweep: dict[str, Any] | None = None
    # Train this model to match a teacher's outputs (training/distill.py): {teacher: PATH, temperature: T}.
    distill: dict[str, Any] | None = None
    # Full-depth isolation of one concept (training/isolation.py): {concept, label, hidden_units, ...}.
    isolation: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._parsed: tuple[tuple, RecipeSpecs] | None = None
        self.specs  # noqa: B018 - parse now, so that a bad section fails when the recipe is made

    @property
    def specs(self) -> RecipeSpecs:
        """The typed sections (:class:`RecipeSpecs`), parsed once per version of the sections."""
        sections = (
            self.regularizers,
            self.routes,
            self.schedules,
            self.reactive,
            self.model.get("concepts"),
            self.distill,
            self.isolation,
        )
        if self._parsed is None or self._parsed[0] != sections:
            self._parsed = (copy.deepcopy(sections), RecipeSpecs.parse(self))
        return self._parsed[1]

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}
        for key in ("sweep", "distill", "isolation"):
            if out[key] is None:
                del out[key]  # a plain recipe (and every run of a sweep) dumps without the key
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_recipe(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Read and validate a recipe file; ``overrides`` maps dotted keys (``training.max_steps``) to values."""
    path = Path(path)
    if not path.is_file():
        raise StructuredConfigError("config", f"no such recipe file: {path}")
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise StructuredConfigError(str(path), f"malformed YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise StructuredConfigError(str(path), f"not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    return parse_recipe(raw, overrides, source=str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps the last
    value, so a second ``training:`` block would silently drop the first (batch size included)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first is not None:
                raise StructuredConfigError(
                    str(key), f"duplicate key: given on line {first} and again on line {line}; keep one"
                )
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (see :class:`_UniqueKeyLoader`)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def parse_recipe(raw: Any, overrides: Mapping[str, Any] | None = None, source: str = "recipe") -> Recipe:
    if not isinstance(raw, Mapping):
        raise StructuredConfigError(source, f"expected a YAML mapping at the top level, got {type(raw).__name__}")
    raw = copy.deepcopy(dict(raw))
    for key, value in (overrides or {}).items():
        set_path(raw, key, value, key)
    raw = expand_concept_color(raw)  # concept_color: X and colors relative to X's hue (training/concept_color.py)
    check_keys(source, raw, _TOP_KEYS, what="top-level keys")
    for key in ("model", "data"):
        if not isinstance(raw.get(key), Mapping):
            raise StructuredConfigError(key, f"is required and must be a mapping, got {raw.get(key)!r}")
    for key, kind in (
        ("training", Mapping),
        ("schedules", Mapping),
        ("regularizers", list),
        ("routes", list),
        ("reactive", list),
    ):
        if raw.get(key) is not None and not isinstance(raw[key], kind):
            expected = "a mapping" if kind is Mapping else "a list"
            raise StructuredConfigError(key, f"expected {expected}, got {type(raw[key]).__name__} {raw[key]!r}")
    for key in ("output_dir", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise StructuredConfigError(key, f"expected a string, got {raw[key]!r}")
    seed = check_number("seed", raw.get("seed", 0), integer=True)
    if not 0 <= seed < 2**32:  # numpy's and torch's seeding both take [0, 2^32)
        raise StructuredConfigError("seed", f"expected an integer in [0, 2^32 - 1], got {seed}")
    recipe = Recipe(
        model=dict(raw["model"]),
        data=dict(raw["data"]),
        regularizers=list(raw.get("regularizers") or []),
        routes=list(raw.get("routes") or []),
        schedules=dict(raw.get("schedules") or {}),
        reactive=list(raw.get("reactive") or []),
        training=dict(raw.get("training") or {}),
        seed=seed,
        output_dir=str(raw.get("output_dir", "outputs/run")),
        description=str(raw.get("description", "")),
        sweep=None if raw.get("sweep") is None else copy.deepcopy(raw["sweep"]),
        distill=None if raw.get("distill") is None else copy.deepcopy(raw["distill"]),
        isolation=None if raw.get("isolation") is None else copy.deepcopy(raw["isolation"]),
    )
    validate_recipe(recipe)
    if "training.learning_rate" in (overrides or {}):
        _check_learning_rate(recipe.training, recipe.specs.schedules)
    if recipe.sweep is not None:
        parse_sweep(recipe.sweep, {k: v for k, v in raw.items() if k != "sweep"}, parse_run=parse_recipe)
    return recipe


def parse_set_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["training.max_steps=10", ...]`` (the scripts' ``--set KEY=VALUE``) -> ``{dotted key: YAML-parsed value}``."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StructuredConfigError("--set", f"expected KEY=VALUE, got {item!r}")
        try:
            overrides[key] = load_yaml(value)
        except yaml.YAMLError as e:
            problem = str(getattr(e, "problem", None) or e).strip()
            raise StructuredConfigError(
                f"--set {item}", f"the value is not valid YAML ({problem}); quote a string, write lists as [a, b]"
            ) from None
    return overrides


def validate_recipe(recipe: Recipe) -> None:
    """Check what parsing the specs (:class:`RecipeSpecs`) does not: the model and data sections, by the recipe's
    family (:mod:`structured_hf.registry`), and the training arguments, so that errors surface before any work."""
    family = family_of(recipe)
    if family.config_at_load:
        model_config(recipe)
    if family.validate is not None:
        family.validate(recipe, list(recipe.specs.regularizers), list(recipe.specs.routes))
    _check_training_fields(recipe.training)
    isolation = recipe.specs.isolation
    if isolation is not None:
        if recipe.distill is not None:
            raise StructuredConfigError(
                "isolation", "a distilled student has no concept samples to isolate; drop `isolation` or `distill`"
            )
        # the labels the run will draw: those of its regularizers and routes
        check_isolation_label(isolation, used_labels(recipe.specs.regularizers, recipe.specs.routes))


def check_data_keys(recipe: Recipe) -> None:
    """The ``data`` keys of the color families."""
    check_keys("data", recipe.data, _DATA_KEYS)


def _check_learning_rate(training: Mapping[str, Any], schedules: Mapping[str, Any]) -> None:
    """An override of ``training.learning_rate`` in a recipe with a learning-rate schedule: there the value only sets
    the scheduler's base (the schedule gives the rate at every step), so the override would be silently ignored.
    (A recipe file's own value is left alone: it is the base, and the file's schedule is what its author wrote.)"""
    schedule = schedules.get("learning_rate")
    if schedule is None or "learning_rate" not in training:
        return
    peak = max(schedule.values)
    low, high, low_open = _TRAINING_RANGES["learning_rate"]
    value = check_number("training.learning_rate", training["learning_rate"], low=low, high=high, low_open=low_open)
    if not math.isclose(value, peak, rel_tol=1e-9):
        raise StructuredConfigError(
            "training.learning_rate",
            f"is {value}, but schedules.learning_rate sets the rate at every step (peak "
            f"{peak}); this value would be ignored. Change the schedule (e.g. --set schedules.learning_rate=1.0e-3 "
            "for a constant rate), or set training.learning_rate to the schedule's peak",
        )


# Ranges of TrainingArguments fields a recipe may set: (low, high, low is exclusive). Out of range, they fail deep in
# torch or transformers after the run has started, or (max_steps <= 0) silently train something else.
_TRAINING_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "learning_rate": (0.0, None, True),
    "weight_decay": (0.0, None, False),
    "adam_beta1": (0.0, 1.0, False),
    "adam_beta2": (0.0, 1.0, False),
    "adam_epsilon": (0.0, None, True),
    "max_grad_norm": (0.0, None, False),
    "num_train_epochs": (0.0, None, True),
    "warmup_ratio": (0.0, 1.0, False),
    "warmup_steps": (0.0, None, False),
    "per_device_train_batch_size": (1, None, False),
    "per_device_eval_batch_size": (1, None, False),
    "gradient_accumulation_steps": (1, None, False),
    "logging_steps": (0.0, None, True),
    "save_steps": (0.0, None, True),
    "eval_steps": (0.0, None, True),
    "save_total_limit": (1, None, False),
    "dataloader_num_workers": (0, None, False),
}
# Samples per device batch above which a run is refused up front: far beyond what these models need, and the point
# where activations alone reach many GB (a batch of 10^8 colors was OOM-killed at ~20 GB instead of failing).
MAX_BATCH_SIZE = 2**20


def _check_training_fields(training: Mapping[str, Any]) -> None:
    fields = {f.name: f for f in dataclasses.fields(AnchoredTrainingArguments)}
    reserved = {"regularizers", "routes", "schedules", "reactive", "seed", "output_dir"}
    for key, value in training.items():
        if key in reserved:
            raise StructuredConfigError(
                f"training.{key}", f"set '{key}' at the top level of the recipe, not in training"
            )
        if key == "push_to_hub" or key.startswith("hub_"):
            # A recipe is saved with the run (recipe.yaml) and Trainer pickles its arguments (training_args.bin):
            # no token may get in there, and Trainer's own push would upload training_args.bin and replace the card.
            raise StructuredConfigError(
                f"training.{key}",
                "Hub options are not recipe fields: use scripts/train.py --push_to_hub "
                "[--hub_model_id NAME] or structured_hf.hub.push_output_dir; the token comes from HF_TOKEN or "
                "`hf auth login`, never from a recipe",
            )
        if key not in fields:
            raise StructuredConfigError(f"training.{key}", "unknown TrainingArguments field")
        default = fields[key].default
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if numeric and key != "max_steps" and (value is not None or key in _TRAINING_RANGES):
            # A float field takes an int too (1 means 1.0); an int field takes only ints.
            low, high, low_open = _TRAINING_RANGES.get(key, (None, None, False))
            check_number(
                f"training.{key}", value, low=low, high=high, low_open=low_open, integer=isinstance(default, int)
            )
    max_steps = check_number("training.max_steps", training.get("max_steps", -1), integer=True)
    if max_steps != -1 and max_steps < 1:
        raise StructuredConfigError(
            "training.max_steps",
            f"expected at least 1 (or -1 to train num_train_epochs), got "
            f"{max_steps}: 0 would save an untrained model as a finished run",
        )
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size"):
        size = training.get(key)
        if isinstance(size, int) and size > MAX_BATCH_SIZE:
            raise StructuredConfigError(
                f"training.{key}",
                f"{size} samples per batch is more than {MAX_BATCH_SIZE}; "
                "such a batch would exhaust memory before the first step. Use a smaller batch "
                "(with gradient_accumulation_steps for a larger effective one)",
            )


def model_type(recipe: Recipe) -> str:
    """The recipe's family name (``model.type``; a ``model.pretrained`` source implies ``pretrained``)."""
    kind = recipe.model.get("type", "pretrained" if "pretrained" in recipe.model else "color_autoencoder")
    return get_family(kind).name


def family_of(recipe: Recipe) -> Family:
    """The registered family of a recipe (clear error for an unknown ``model.type``)."""
    return get_family(model_type(recipe))


def model_config(recipe: Recipe):
    """The model config the recipe describes (validated, including the concept map)."""
    family = family_of(recipe)
    kind = family.name
    if family.make_config is not None:
        return family.make_config(recipe)
    spec = {k: v for k, v in recipe.model.items() if k != "type"}
    config_cls = family.config_class
    allowed = {f.name for f in dataclasses.fields(config_cls)} - {
        f.name for f in dataclasses.fields(config_cls.__mro__[1])
    }
    check_keys("model", spec, allowed, context=f"for {kind}")
    try:
        return config_cls(**spec)
    except StructuredConfigError:
        raise
    except Exception as e:  # strict dataclass validation wraps our errors; surface the message, not a traceback
        cause = e.__cause__ if isinstance(e.__cause__, StructuredConfigError) else None
        raise StructuredConfigError("model", str(cause or e).strip()) from None


def build_task_splits(recipe: Recipe) -> datasets.DatasetDict:
    """Train/validation/test splits of the color-operation task of a color_transformer recipe."""
    task = dict(recipe.data["task"])
    labels = recipe.data.get("labels") or {}
    parse_labelers(labels)  # same labeler spec as colors: clear errors for bad features/scales
    try:
        return build_color_task_splits(labelers=labels, **task)
    except TypeError as e:
        raise StructuredConfigError("data.task", str(e)) from None


def build_datasets(recipe: Recipe) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Train (and eval) datasets with label-probability columns, built by the recipe's family."""
    return family_of(recipe).datasets(recipe)


def build_lm_datasets(recipe: Recipe, progress: bool = False):
    """``(chunks, tokenizer, blocks)`` of a structured_gpt recipe (see :mod:`structured_hf.data.lm_data`)."""
    return build_lm_data(LMDataSpec.from_dict(recipe.data), progress=progress)


def without_ids(blocks: datasets.Dataset) -> datasets.Dataset:
    """LM blocks without the (string) chunk ids, which the tensor-backed training dataset cannot hold."""
    return blocks.remove_columns([c for c in ("id",) if c in blocks.column_names])


def lm_model_config(recipe: Recipe, tokenizer) -> StructuredGPTConfig:
    """The GPT config of a recipe with the vocabulary and special tokens of its tokenizer."""
    config = model_config(recipe)
    config.vocab_size = len(tokenizer)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.validate()
    return config


def build_trainer(recipe: Recipe, lm_data: tuple | None = None, **trainer_kwargs: Any) -> AnchoredTrainer:
    """Model, datasets and trainer from a recipe; seeds everything first so the run is reproducible.

    ``lm_data``: the ``(chunks, tokenizer, blocks)`` of a structured_gpt recipe when the caller built them already
    (:func:`build_lm_datasets`); the tokenizer becomes the trainer's ``processing_class``, so it is saved with the
    model and ``AutoTokenizer.from_pretrained(output_dir)`` works.
    """
    set_seed(recipe.seed)
    model, train_ds, eval_ds = family_of(recipe).build(recipe, trainer_kwargs, lm_data)
    training = dict(recipe.training)
    try:
        args = AnchoredTrainingArguments(
            output_dir=recipe.output_dir,
            seed=recipe.seed,
            regularizers=list(recipe.specs.regularizers),
            routes=list(recipe.specs.routes),
            schedules=dict(recipe.specs.schedules),
            reactive=list(recipe.specs.reactive),
            **training,
        )
    except StructuredConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise StructuredConfigError("training", str(e)) from None
    curriculum = Curriculum.from_dict(recipe.data.get("curriculum"))
    if (
        recipe.specs.isolation is not None
    ):  # the concept's samples train only its dedicated units (training/isolation.py)
        return IsolatedTrainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            curriculum=curriculum,
            isolation=recipe.specs.isolation,
            **trainer_kwargs,
        )
    spec = recipe.specs.distill
    if spec is not None:  # a fresh student trained on the teacher's outputs (training/distill.py)
        return DistillationTrainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            curriculum=curriculum,
            teacher=load_teacher(spec),
            temperature=spec.temperature,
            **trainer_kwargs,
        )
    return AnchoredTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, curriculum=curriculum, **trainer_kwargs
    )
