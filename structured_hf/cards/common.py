"""What every model card needs: the templates shipped with the package, reading a run folder, formatting helpers.

The templates live in ``structured_hf/cards/templates/`` and are package data (``pyproject.toml``), so an installed
wheel renders cards as well as a source checkout does.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCardData

from ..concepts import ConceptMap, ConceptSpec
from ..shared_files import files_to_push
from ..schedules import Schedule
from ..training.arguments import AnchoredTrainingArguments, RegularizerSpec
from ..training.recipe import Recipe, parse_recipe
from ..training.routing import RouteSpec
from ..version import __version__

# Inside the package (not the repository's model_cards/, which holds rendered examples): a wheel carries them.
TEMPLATES = Path(__file__).resolve().parent / "templates"

MAIN_FIGURES = ("training_curves.png", "latents.png")
# Captions of the figures run_experiment may write besides the two main ones (others get their file name).
FIGURE_CAPTIONS: dict[str, str] = {
    "schedules.png": "Every scheduled quantity (regularizer weights, learning rate, data curriculum) against the step",
    "evolution.png": "The latent space at snapshots during training",
    "evolution.gif": "The latent space during training, animated",
}


def template_path(family: str) -> str:
    """The card template of a model family (``color_autoencoder``, ``color_transformer``, ``structured_gpt``)."""
    path = TEMPLATES / f"{family}.md"
    if not path.is_file():  # a broken install, not a user error: say what is missing where
        raise FileNotFoundError(f"model card template {path} is missing from the installed package")
    return str(path)


def package_version() -> str:
    """The structured_hf version the card names."""
    return __version__


def fmt(x: Any) -> str:
    """Floats to 3 significant digits, anything else as ``str``."""
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def schedule_text(schedule: Schedule) -> str:
    """A parsed regularizer weight or schedule as one line: ``0.1``, or ``linear (0: 0, 500: 0.1)``."""
    if len(schedule.steps) == 1:
        return fmt(schedule.values[0])
    keys = ", ".join(f"{int(s)}: {fmt(v)}" for s, v in zip(schedule.steps, schedule.values))
    return f"{schedule.interpolation} ({keys})"


def measured_text(metrics: Mapping[str, Any]) -> str:
    """A color concept's measured placement (``metrics.json`` ``concepts.<name>``) as one cell."""
    if "cosine" in metrics:
        return f"cos = {metrics['cosine']:.4f}"
    if "leak_max" in metrics:
        return f"leak max = {metrics['leak_max']:.4f}, mean = {metrics['leak_mean']:.4f}"
    return "n/a"


def place_text(c: ConceptSpec) -> str:
    """Where a concept lives, in words: its direction, or its axes (a plane when there are two).

    A short direction (a color latent) is printed whole; a wide one (a residual stream of 64-128 entries) by its
    nonzero entries, since a card row of 128 numbers hides the one or four that matter."""
    if c.direction is None:
        return "plane of axes " + ", ".join(str(a) for a in c.axes) if len(c.axes) == 2 else f"axes {list(c.axes)}"
    values = [float(v) for v in c.direction]
    if len(values) <= 8:
        return "direction (" + ", ".join(fmt(v) for v in values) + ")"
    support = [i for i, v in enumerate(values) if v != 0.0]
    if len(support) == 1:
        return f"axis {support[0]} of {len(values)} (one-hot)"
    if len(support) <= 8:
        entries = ", ".join(f"{i}: {fmt(values[i])}" for i in support)
        return f"direction of width {len(values)}, nonzero on axes {{{entries}}}"
    return f"direction of width {len(values)} ({len(support)} nonzero entries)"


def card_metadata(
    repo_or_path: str,
    family_tags: Sequence[str],
    *,
    pipeline_tag: str | None = None,
    dataset_ids: Sequence[str] | None = None,
) -> tuple[str, ModelCardData]:
    """A card's model name (the last part of ``repo_or_path``) and its Hub metadata: the tags every structured_hf
    card carries plus the family's own."""
    name = Path(str(repo_or_path)).name
    data = ModelCardData(
        library_name="structured_hf",
        license="mit",
        model_name=name,
        pipeline_tag=pipeline_tag,
        datasets=list(dataset_ids) if dataset_ids else None,
        tags=["structured_hf", "concept-anchoring", "representation-engineering", *family_tags],
    )
    return name, data


def training_fields(recipe: Recipe, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The template fields of the "how it was trained" table that every family's card fills the same way."""
    training = recipe.training
    return {
        "steps": training.get("max_steps"),
        "batch_size": training.get("per_device_train_batch_size"),
        "optimizer": str(training.get("optim", default_optim())),
        "weight_decay": fmt(float(training.get("weight_decay", 0.0))),
        "seed": recipe.seed,
        "train_runtime": fmt(metrics.get("train_runtime_s", float("nan"))),
        "device": device_text(metrics),
        "version": package_version(),
        "num_parameters": metrics.get("num_parameters", "?"),
    }


def default_optim() -> str:
    """The optimizer a recipe without ``training.optim`` trains with."""
    default = next(f.default for f in dataclasses.fields(AnchoredTrainingArguments) if f.name == "optim")
    return str(getattr(default, "value", default))


def device_text(metrics: Mapping[str, Any]) -> str:
    """Where the run trained (only known when the run recorded its runtime)."""
    return f"{platform.machine()} CPU" if "train_runtime_s" in metrics else "?"


def recipe_concepts(recipe: Recipe, concepts: ConceptMap | None) -> ConceptMap:
    """The concept map to print: the model's own (``concepts``) when given, else the recipe's."""
    return concepts if concepts is not None else recipe.specs.concepts


def spec_site(spec: RegularizerSpec | RouteSpec, concepts: ConceptMap) -> str:
    """A regularizer's or route's site: its own, else its concept's."""
    return spec.site or (concepts[spec.concept].site if spec.concept in concepts else "-")


def regularizer_row(spec: RegularizerSpec, concepts: ConceptMap, everyone: str) -> dict[str, str]:
    """A regularizer as a card table row (``everyone``: how the card calls an unlabelled term's samples)."""
    label = spec.to_dict().get("label") or everyone  # the label as written, "not:red" included
    return {
        "name": spec.name,
        "loss": spec.loss,
        "concept": spec.concept or "-",
        "label": label,
        "site": spec_site(spec, concepts),
        "weight": schedule_text(spec.weight),
    }


def saved_concepts(folder: Path) -> ConceptMap:
    """The concept map saved in ``folder/config.json``: the model's own, which surgery keeps up to date (a run's
    ``recipe.yaml`` still names the concepts it was trained with)."""
    config = json.loads((folder / "config.json").read_text())
    return ConceptMap.parse(config.get("concepts"))


def run_files(folder: Path) -> tuple[Recipe, dict[str, Any]] | None:
    """A run folder's ``(recipe, metrics)``; ``None`` when either file is missing (nothing to render a card from)."""
    if not (folder / "recipe.yaml").is_file() or not (folder / "metrics.json").is_file():
        return None
    recipe = parse_recipe(yaml.safe_load((folder / "recipe.yaml").read_text()), source=str(folder / "recipe.yaml"))
    return recipe, json.loads((folder / "metrics.json").read_text())


def optional_text(folder: Path, name: str) -> str | None:
    """The text of ``folder/name``, or ``None`` when there is no such file."""
    path = folder / name
    return path.read_text() if path.is_file() else None


def figure_files(folder: Path, suffixes: tuple[str, ...] = (".png",)) -> list[str]:
    """The figures of a run folder a card may show: the image files that a Hub push would upload."""
    return [f for f in files_to_push(folder) if f.endswith(suffixes)]


def figure_rows(names: Sequence[str]) -> list[dict[str, str]]:
    """``{path, caption}`` for each extra figure (the two main figures have their own card sections)."""
    return [
        {"path": f, "caption": FIGURE_CAPTIONS.get(Path(f).name, Path(f).stem.replace("_", " "))}
        for f in names
        if f not in MAIN_FIGURES
    ]
