"""The model card of a StructuredGPT trained with an anchored concept (M4)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from ..concepts import ConceptMap
from ..evaluation.language import language_markdown
from ..training.recipe import Recipe
from .common import (
    spec_site,
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


def render_structured_gpt_card(
    recipe: Recipe,
    metrics: Mapping[str, Any],
    repo_or_path: str,
    *,
    concepts: ConceptMap | None = None,
    include_code: bool = False,
    dataset_ids: Sequence[str] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    comparison: str | None = None,
    figures: Sequence[str] = ("training_curves.png",),
) -> ModelCard:
    """The model card of a trained StructuredGPT (M4), from its recipe, `metrics.json` and, when given, its
    `language_evaluation.json` contents and a comparison table (markdown from ``scripts/compare_lm.py``). ``concepts`` is the model's concept map (default: the
    recipe's)."""
    concepts = recipe_concepts(recipe, concepts)
    name, card_data = card_metadata(
        repo_or_path, ["structured-gpt", "unlearning"], pipeline_tag="text-generation", dataset_ids=dataset_ids
    )
    m, data = recipe.model, recipe.data
    hidden = m.get("hidden_size", 128)
    norm = "nGPT-style hypersphere" if m.get("norm") == "hypersphere" else "pre-LayerNorm (GPT-2 style)"
    arch = (
        f"Token + learned position embeddings → {m.get('num_layers', 4)} {norm} causal blocks of width {hidden} "
        f"with {m.get('num_heads', 4)} heads and a GELU MLP of width {m.get('intermediate_size') or 4 * hidden} → "
        f"final norm → output head tied to the token embedding; context {m.get('max_position_embeddings', 256)} "
        "tokens."
    )
    cosines = (evaluation or {}).get("cosines", {})

    def measured(c: Any) -> str:
        values = cosines.get(c.name)
        if not values:
            return "n/a"
        return f"{values.get(f'forget:{c.name}', float('nan')):.3f} / {values.get('retain', float('nan')):.3f}"

    concept_rows = [
        {
            "name": c.name,
            "site": c.site,
            "place": place_text(c),
            "description": c.description or "-",
            "measured": measured(c) if c.direction is not None else "-",
        }
        for c in concepts
    ]
    reg_rows = [regularizer_row(r, concepts, "all chunks") for r in recipe.specs.regularizers]
    route_rows = [
        {
            "name": r.name,
            "concept": r.concept,
            "label": r.label,
            "site": spec_site(r, concepts),
            "weight": schedule_text(r.weight),
        }
        for r in recipe.specs.routes
    ]
    text = data.get("text") or {}
    source = text.get("labelled") or (
        text.get("labels_config") if isinstance(text.get("labels_config"), str) else "an inline labels config"
    )
    filt = data.get("filter")
    train_data = (
        f"chunks from `{source}` (default: the King James Bible, public domain), "
        f"{metrics.get('train_chunks', '?')} training chunks"
        + (
            f", with chunks labelled {', '.join(filt.get('concepts', []))} (p ≥ {filt.get('threshold', 0.5)}) "
            "removed (data-filtering baseline)"
            if filt
            else ""
        )
    )
    headline = []
    if "eval_perplexity" in metrics:
        headline.append(f"validation perplexity {metrics['eval_perplexity']:.2f}")
    for key, value in (evaluation or {}).get("delta", {}).items():
        if key.startswith("ablate:"):
            concept = key.split(":", 1)[1]
            headline.append(
                f"deleting `{concept}` changes its forget loss by {value[f'forget:{concept}']:+.3f} nats, "
                f"retain by {value['retain']:+.3f}"
            )
    first = next((c.name for c in concepts if c.direction is not None), "violence")
    return ModelCard.from_template(
        card_data,
        template_path=template_path("structured_gpt"),
        model_name=name,
        description=recipe.description,
        repo_or_path=repo_or_path,
        include_code=include_code,
        **training_fields(recipe, metrics),
        headline="; ".join(headline) or "see below",
        first_concept=first,
        site_summary=", ".join(f"`{s}`" for s in sorted({c.site for c in concepts})) or "the residual stream",
        concepts=concept_rows,
        architecture=arch,
        hidden_size=hidden,
        block_size=data.get("block_size", 128),
        train_data=train_data,
        vocab_size=(data.get("tokenizer") or {}).get("vocab_size", 4096),
        tokens_per_second=f"{metrics.get('train_tokens_per_second', float('nan')):.0f}",
        eval_loss=fmt(metrics.get("eval_loss", float("nan"))),
        eval_perplexity=fmt(metrics.get("eval_perplexity", float("nan"))),
        labelers=", ".join(f"`{x}`" for x in text.get("labelers") or ["every labeler of the labels config"]),
        token_scope=token_scope_text(data.get("token_scope")),
        regularizers=reg_rows,
        routes=route_rows,
        schedules={k: schedule_text(v) for k, v in recipe.specs.schedules.items()},
        has_curves="training_curves.png" in figures,
        evaluation=language_markdown(evaluation) if evaluation else "Not evaluated (run `scripts/evaluate.py`).",
        comparison=comparison,
    )


def token_scope_text(scope: Mapping[str, Any] | None) -> str:
    """Which tokens of a labelled chunk a drawn label reaches (``data.token_scope`` of a structured_gpt recipe)."""
    if not scope:
        return "all tokens of the chunks that drew it (padding excluded)"
    evidence = f"the `{scope.get('labeler')}` labeler's matches"
    if scope.get("mode", "after") == "window":
        return f"only each of {evidence} and the {scope.get('window', 32) - 1} tokens after it (token-level labels)"
    return (
        f"only the tokens from the first of {evidence} on (token-level labels: a causal model has read nothing "
        "about the concept before)"
    )


def render_from_folder(
    folder: Path, repo_or_path: str, *, include_code: bool, dataset_ids: Sequence[str] | None
) -> ModelCard | None:
    """The card of a StructuredGPT run folder, with its language evaluation and comparison when present."""
    run = run_files(folder)
    if run is None:
        return None
    recipe, metrics = run
    evaluation = optional_text(folder, "language_evaluation.json")
    return render_structured_gpt_card(
        recipe,
        metrics,
        repo_or_path,
        concepts=saved_concepts(folder),
        include_code=include_code,
        dataset_ids=dataset_ids,
        evaluation=json.loads(evaluation) if evaluation is not None else None,
        comparison=optional_text(folder, "comparison.md"),
        figures=figure_files(folder),
    )
