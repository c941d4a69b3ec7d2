"""Model cards (rendered with `huggingface_hub.ModelCard`) and, later, push/pull helpers."""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .concepts import ConceptMap
from .training.recipe import Recipe
from .training.schedules import parse_schedule

TEMPLATES = Path(__file__).resolve().parent.parent / "model_cards"


def _fmt(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _schedule_text(spec: Any) -> str:
    schedule = parse_schedule(spec, "weight")
    if len(schedule.steps) == 1:
        return _fmt(schedule.values[0])
    keys = ", ".join(f"{int(s)}: {_fmt(v)}" for s, v in zip(schedule.steps, schedule.values))
    return f"{schedule.interpolation} ({keys})"


def _measured(metrics: Mapping[str, Any]) -> str:
    if "cosine" in metrics:
        return f"cos = {metrics['cosine']:.4f}"
    if "leak_max" in metrics:
        return f"leak max = {metrics['leak_max']:.4f}, mean = {metrics['leak_mean']:.4f}"
    return "n/a"


def render_color_model_card(recipe: Recipe, metrics: Mapping[str, Any], repo_or_path: str) -> ModelCard:
    """The model card of a trained color autoencoder, from its recipe and `metrics.json` contents."""
    concepts = ConceptMap.parse(recipe.model.get("concepts"))
    card_data = ModelCardData(
        library_name="structured_hf",
        license="mit",
        tags=["structured_hf", "concept-anchoring", "representation-engineering", "color-autoencoder"],
        model_name=Path(repo_or_path).name,
    )
    m = recipe.model
    arch = (
        f"RGB → {m.get('num_layers', 1)}× (Linear → {m.get('activation', 'gelu')}) of width {m.get('hidden_dim', 16)} "
        f"→ Linear to K = {m.get('bottleneck_dim', 4)}"
        f"{' → L2 normalization' if m.get('normalize_bottleneck', True) else ''} → mirror decoder → "
        f"{m.get('output_head', 'clamp')} output head."
    )
    concept_rows = [
        {
            "name": c.name,
            "site": c.site,
            "place": f"direction {list(c.direction)}" if c.direction is not None else f"axes {list(c.axes)}",
            "prototypes": ", ".join(str(p) for p in c.prototypes) or "-",
            "measured": _measured(metrics.get("concepts", {}).get(c.name, {})),
        }
        for c in concepts
    ]
    reg_rows = []
    for r in recipe.regularizers:
        concept = r.get("concept")
        site = r.get("site") or (concepts[concept].site if concept in concepts else "-")
        reg_rows.append({"name": r.get("name") or r["loss"], "loss": r["loss"], "concept": concept or "-",
                         "label": r.get("label") or "all samples", "site": site,
                         "weight": _schedule_text(r.get("weight", 1.0))})
    labels = ", ".join(
        f"`{name}` = {spec.get('scale', 1.0)} · {spec.get('feature', name)}^{spec.get('power', 1.0)}"
        for name, spec in (recipe.data.get("labels") or {}).items()
    ) or "none"
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "color_autoencoder.md"),
        model_name=Path(repo_or_path).name,
        description=recipe.description,
        repo_or_path=repo_or_path,
        site_summary=", ".join(sorted({c.site for c in concepts})) or "bottleneck",
        concepts=concept_rows,
        architecture=arch,
        steps=recipe.training.get("max_steps"),
        batch_size=recipe.training.get("per_device_train_batch_size"),
        seed=recipe.seed,
        train_runtime=_fmt(metrics.get("train_runtime_s", float("nan"))),
        device=f"{platform.machine()} CPU",
        train_data=json.dumps(recipe.data.get("train")),
        labels=labels,
        regularizers=reg_rows,
        schedules={k: _schedule_text(v) for k, v in recipe.schedules.items()},
        mse_max=_fmt(metrics["named_color_mse_max"]),
        mse_mean=_fmt(metrics["named_color_mse_mean"]),
        named_color_mse={k: _fmt(v) for k, v in metrics["named_color_mse"].items()},
    )
