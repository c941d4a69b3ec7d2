"""The model card of a color autoencoder (M1/M2 recipes)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from ..concepts import ConceptMap
from ..data.labels import parse_labelers
from ..training.recipe import Recipe
from .common import (
    regularizer_row,
    figure_files,
    figure_rows,
    card_metadata,
    fmt,
    measured_text,
    place_text,
    recipe_concepts,
    run_files,
    saved_concepts,
    schedule_text,
    template_path,
    training_fields,
)


def render_color_model_card(
    recipe: Recipe,
    metrics: Mapping[str, Any],
    repo_or_path: str,
    *,
    concepts: ConceptMap | None = None,
    dataset_ids: Sequence[str] | None = None,
    include_code: bool = False,
    figures: Sequence[str] = (),
) -> ModelCard:
    """The model card of a trained color autoencoder, from its recipe and `metrics.json` contents.

    Args:
        recipe: the run's recipe (``recipe.yaml``).
        metrics: the run's ``metrics.json``.
        repo_or_path: where readers load it from (a Hub id, or the output folder for a local card).
        dataset_ids: Hub ids of the datasets it was trained on, for the card's metadata (the default recipe trains on
            a generated RGB grid, so there is none).
        include_code: whether the repo carries remote code (the card then says how to load it without
            structured_hf).
        concepts: the model's concept map (``model.concept_map``, or ``config.json`` of a saved model); default: the
            recipe's, which is the model's until surgery changes it.
        figures: more image files next to the card (relative paths), shown under "More figures"; the training
            curves and latent plots (``training_curves.png``, ``latents.png``) always have their own sections.
    """
    concepts = recipe_concepts(recipe, concepts)
    name, card_data = card_metadata(repo_or_path, ["color-autoencoder"], dataset_ids=dataset_ids)
    m = recipe.model
    norm = m.get("normalize_bottleneck", True)
    arch = (
        f"RGB → {m.get('num_layers', 1)}× (Linear → {m.get('activation', 'gelu')}) "
        f"of width {m.get('hidden_dim', 16)} "
        f"→ Linear to K = {m.get('bottleneck_dim', 4)}{' → L2 normalization (unit sphere)' if norm else ''} → "
        f"mirror decoder → {m.get('output_head', 'clamp')} output head."
    )
    concept_rows = [
        {
            "name": c.name,
            "site": c.site,
            "place": place_text(c),
            "prototypes": ", ".join(str(p) for p in c.prototypes) or "-",
            "description": c.description or "-",
            "measured": measured_text(metrics.get("concepts", {}).get(c.name, {})),
        }
        for c in concepts
    ]
    reg_rows = [regularizer_row(r, concepts, "all samples") for r in recipe.specs.regularizers]
    labels = [
        {"name": label, "formula": f"{fmt(float(lab.scale))} · {lab.feature}^{fmt(float(lab.power))}"}
        for label, lab in parse_labelers(recipe.data.get("labels")).items()
    ]
    leaks: dict[str, float] = {}
    for c in concepts:
        leaks.update(metrics.get("concepts", {}).get(c.name, {}).get("leak", {}))
    color_rows = [
        {"name": k, "mse": fmt(v), "leak": fmt(leaks[k]) if k in leaks else ""}
        for k, v in metrics["named_color_mse"].items()
    ]
    headline = [f"worst named-color MSE {fmt(metrics['named_color_mse_max'])}"]
    for c in concepts:
        cm = metrics.get("concepts", {}).get(c.name, {})
        if "cosine" in cm:
            headline.append(f"`{c.name}` at cos {cm['cosine']:.3f} from its direction")
        elif "leak_max" in cm:
            headline.append(f"`{c.name}` prototypes ≤ {100 * cm['leak_max']:.1f}% outside their axes")
    return ModelCard.from_template(
        card_data,
        template_path=template_path("color_autoencoder"),
        model_name=name,
        description=recipe.description,
        repo_or_path=repo_or_path,
        include_code=include_code,
        **training_fields(recipe, metrics),
        bottleneck_dim=m.get("bottleneck_dim", 4),
        headline="; ".join(headline),
        site_summary=", ".join(f"`{s}`" for s in sorted({c.site for c in concepts})) or "`bottleneck`",
        concepts=concept_rows,
        architecture=arch,
        train_data=data_text(recipe.data.get("train")),
        eval_data=data_text(recipe.data.get("eval")) if recipe.data.get("eval") else None,
        labels=labels,
        regularizers=reg_rows,
        schedules={k: schedule_text(v) for k, v in recipe.specs.schedules.items()},
        mse_max=fmt(metrics["named_color_mse_max"]),
        mse_mean=fmt(metrics["named_color_mse_mean"]),
        eval_loss=fmt(metrics["eval_loss"]) if "eval_loss" in metrics else None,
        named_colors=color_rows,
        has_leak=bool(leaks),
        figures=figure_rows(figures),
    )


def data_text(spec: Any) -> str:
    """A color dataset spec (``data.train`` of a recipe) in words."""
    if not isinstance(spec, Mapping):
        return f"`{json.dumps(spec)}`"
    if spec.get("grid") == "rgb":
        n = int(spec.get("size", 8))
        text = f"the {n}³ = {n**3} colors of an evenly spaced RGB grid"
    elif spec.get("grid") == "hsv":
        text = (
            f"an HSV grid of {spec.get('hues')} hues × {spec.get('saturations')} saturations × "
            f"{spec.get('values')} values"
        )
    else:
        text = f"`{json.dumps(dict(spec))}`"
    return text + (" plus the 17 named colors" if spec.get("include_named") else "")


def render_from_folder(
    folder: Path, repo_or_path: str, *, include_code: bool, dataset_ids: Sequence[str] | None
) -> ModelCard | None:
    """The card of a color autoencoder's run folder (``None`` without ``recipe.yaml`` and ``metrics.json``)."""
    run = run_files(folder)
    if run is None:
        return None
    recipe, metrics = run
    return render_color_model_card(
        recipe,
        metrics,
        repo_or_path,
        concepts=saved_concepts(folder),
        include_code=include_code,
        figures=figure_files(folder, (".png", ".svg", ".gif")),
        dataset_ids=dataset_ids,
    )
