"""The model card of a color-operation transformer (M3)."""

from __future__ import annotations

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
    card_metadata,
    fmt,
    optional_text,
    place_text,
    recipe_concepts,
    run_files,
    saved_concepts,
    schedule_text,
    template_path,
    training_fields,
)


def render_color_transformer_card(
    recipe: Recipe,
    metrics: Mapping[str, Any],
    repo_or_path: str,
    *,
    concepts: ConceptMap | None = None,
    include_code: bool = False,
    relearning: str | None = None,
    figures: Sequence[str] = ("concept_tracking.png", "control_ratios.png"),
) -> ModelCard:
    """The model card of a trained color-operation transformer (M3), from its recipe and `metrics.json` contents:
    concept map, recipe and schedules, per-operation errors, red's placement per residual site, the control table
    (suppression and deletion ratios per operation) and, when given, a relearning-attack table (markdown).
    ``concepts`` is the model's concept map (default: the recipe's)."""
    concepts = recipe_concepts(recipe, concepts)
    name, card_data = card_metadata(repo_or_path, ["color-transformer"])
    m = recipe.model
    norm = "nGPT-style hypersphere" if m.get("norm") == "hypersphere" else "pre-norm (LayerNorm)"
    arch = (
        f"4 tokens (operation embedding, two colors embedded linearly from RGB, a learned result query) plus slot "
        f"embeddings → {m.get('num_layers', 3)} {norm} blocks of width {m.get('hidden_size', 64)} with "
        f"{m.get('num_heads', 4)} bidirectional attention heads and a GELU MLP of width "
        f"{m.get('intermediate_size', 256)} → final LayerNorm → Linear head on the result query → RGB."
    )
    placement = metrics.get("concepts", {})

    def measured(c: Any) -> str:
        site = placement.get(c.name, {}).get(c.site)
        if not site:
            return "n/a"
        return f"cos = {site['cosine_red']:.3f}, share far = {site['share_far']:.4f}"

    concept_rows = [
        {
            "name": c.name,
            "site": c.site,
            "place": place_text(c),
            "description": c.description or "-",
            "measured": measured(c),
        }
        for c in concepts
    ]
    reg_rows = [regularizer_row(r, concepts, "all examples") for r in recipe.specs.regularizers]
    labels = [
        {
            "name": label,
            "formula": f"{fmt(float(lab.scale))} · (max {lab.feature} of operands and result)^{fmt(float(lab.power))}",
        }
        for label, lab in parse_labelers(recipe.data.get("labels")).items()
    ]
    test = metrics.get("test_mse", {})
    per_op = [
        {
            "op": op,
            "all": f"{v['all']:.2e}",
            "red": f"{v['red']:.2e}",
            "far": f"{v['far']:.2e}",
            "n": v["n"],
            "n_red": v["n_red"],
            "n_far": v["n_far"],
        }
        for op, v in test.items()
    ]
    rows = []
    for cname, sites in placement.items():
        for site, v in sites.items():
            rows.append(
                {
                    "site": f"{cname}` @ `{site}" if len(placement) > 1 else site,
                    "cos": f"{v['cosine_red']:.3f}",
                    "share": f"{v['share_far']:.4f}",
                    "anchored": "yes" if v.get("anchored") else "",
                }
            )
    control = metrics.get("control", {})
    operations = list(control.get("operations", test.keys()))
    control_rows = [
        {
            "name": v,
            "met": "yes" if control["summary"][v]["meets_target"] else "no",
            "ratios": [
                {
                    "red": f"{control['variants'][v][op]['red_ratio']:.1f}",
                    "far": f"{control['variants'][v][op]['far_ratio']:.2f}",
                }
                for op in operations
            ],
        }
        for v in control.get("summary", {})
    ]
    headline = []
    if test:
        headline.append(f"worst per-operation test MSE {max(v['all'] for v in test.values()):.2e}")
    for c in concepts:
        site = placement.get(c.name, {}).get(c.site)
        if site:
            headline.append(f"`{c.name}` at cos {site['cosine_red']:.3f} at `{c.site}`")
    for v, s in control.get("summary", {}).items():
        headline.append(
            f"{v}: red-involving error ×{s['min_red_ratio']:.0f} or more, far ×{s['max_far_ratio']:.2f} at most"
        )
    task = recipe.data.get("task", {})
    return ModelCard.from_template(
        card_data,
        template_path=template_path("color_transformer"),
        model_name=name,
        description=recipe.description,
        repo_or_path=repo_or_path,
        include_code=include_code,
        **training_fields(recipe, metrics),
        headline="; ".join(headline) or "see below",
        site_summary=", ".join(f"`{s}`" for s in sorted({c.site for c in concepts})) or "the residual stream",
        operations=", ".join(m.get("operations") or operations),
        concepts=concept_rows,
        architecture=arch,
        hidden_size=m.get("hidden_size", 64),
        train_data=(
            f"every operand combination of a {task.get('grid_size', 10)}³ RGB grid (unary operations) and "
            f"unordered pairs of a {task.get('pair_grid_size', 6)}³ grid (mix), minus held-out combinations; "
            "each operation equally likely per draw"
        ),
        labels=labels,
        regularizers=reg_rows,
        schedules={k: schedule_text(v) for k, v in recipe.specs.schedules.items()},
        per_op=per_op,
        placement=rows,
        has_tracking="concept_tracking.png" in figures,
        has_control_figure="control_ratios.png" in figures,
        control=control_rows,
        operations_list=operations,
        red_target=fmt(control.get("targets", {}).get("red_ratio_min", 10.0)),
        far_target=fmt(control.get("targets", {}).get("far_ratio_max", 1.5)),
        relearning=relearning,
        has_recovery="recovery_curves.png" in figures,
    )


def render_from_folder(
    folder: Path, repo_or_path: str, *, include_code: bool, dataset_ids: Sequence[str] | None
) -> ModelCard | None:
    """The card of a color transformer's run folder (``None`` without ``recipe.yaml`` and ``metrics.json``)."""
    run = run_files(folder)
    if run is None:
        return None
    recipe, metrics = run
    return render_color_transformer_card(
        recipe,
        metrics,
        repo_or_path,
        concepts=saved_concepts(folder),
        include_code=include_code,
        relearning=optional_text(folder, "relearning.md"),
        figures=figure_files(folder),
    )
