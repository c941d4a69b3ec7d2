"""The color-operation transformer family (M3): a small transformer computing color operations, concepts anchored
in its residual stream."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import AutoModel

from ..cards.color_transformer import render_color_transformer_card, render_from_folder
from ..data.color_tasks import ColorTaskCollator
from ..data.curriculum import Curriculum
from ..data.labels import parse_labelers
from ..errors import StructuredConfigError
from ..validation import check_keys
from ..evaluation.color_tasks import concept_placement, per_operation_errors
from ..evaluation.tables import json_ready
from ..evaluation.transformer_control import (
    control_evaluation,
    control_markdown,
    control_variants,
    plot_control_ratios,
)
from ..experiment import resume_note, train_and_save
from ..hub import pull
from ..interventions import ablate
from ..models.color_transformer import ColorTransformerConfig, ColorTransformerModel
from ..registry import Family, register_family
from ..run_folder import RunState, prepare_output_dir
from ..training.callbacks import ProbeCallback
from ..training.recipe import Recipe, build_task_splits, check_data_keys, load_recipe, model_config
from ..visualization import plot_concept_tracking, plot_training_curves

logger = logging.getLogger(__name__)
_TASK_KEYS = {"operations", "grid_size", "pair_grid_size", "test_fraction", "validation_fraction", "seed"}


def validate(recipe: Recipe, regularizers: list, routes: list) -> None:
    check_data_keys(recipe)
    task = recipe.data.get("task")
    if not isinstance(task, Mapping):
        raise StructuredConfigError("data.task", f"a color_transformer recipe needs a task mapping, got {task!r}")
    check_keys("data.task", task, _TASK_KEYS)
    parse_labelers(recipe.data.get("labels"))
    Curriculum.from_dict(recipe.data.get("curriculum"))


def build_datasets(recipe: Recipe):
    splits = build_task_splits(recipe)
    return splits["train"], splits["validation"]


def build(recipe: Recipe, trainer_kwargs: dict[str, Any], prepared: Any = None):
    model = ColorTransformerModel(model_config(recipe))
    train_ds, eval_ds = build_datasets(recipe)
    labels = sorted((recipe.data.get("labels") or {}).keys())
    trainer_kwargs.setdefault("data_collator", ColorTaskCollator(labels))
    trainer_kwargs.setdefault("eval_data_collator", ColorTaskCollator(labels))
    return model, train_ds, eval_ds


def run(recipe: Recipe, run: RunState | None = None, figures: bool = True, animation: bool = True) -> dict[str, Any]:
    """Train a color-operation transformer; metrics: per-operation test error (red-involving vs far from red) and
    the red concept's cosine at every residual site, tracked during training."""
    run = run or prepare_output_dir(recipe.output_dir, recipe.to_dict())
    out = Path(recipe.output_dir)
    splits = build_task_splits(recipe)
    max_steps = int(recipe.training.get("max_steps", 0))
    tracker = ProbeCallback(
        lambda m: concept_placement(m, splits["validation"], limit=1024), every=max(max_steps // 20, 1)
    )
    trainer, result, train_runtime = train_and_save(recipe, [tracker], run)
    if not trainer.is_world_process_zero():
        return {}
    model = trainer.model
    operations = list(model.config.operations)
    metrics: dict[str, Any] = {
        "test_mse": per_operation_errors(model, splits["test"], operations),
        "concepts": concept_placement(model, splits["test"]),
        "concept_tracking": [{"step": step, **placement} for step, placement in tracker.history],
        "train_runtime_s": train_runtime,
        "train_steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "seed": recipe.seed,
    }
    resume_note(run, metrics)
    metrics["test_mse_max"] = max(v["all"] for v in metrics["test_mse"].values())
    # Suppression and deletion of every direction concept, per operation (red-involving vs far-from-red ratios).
    metrics["control"] = control_evaluation(model, splits["test"])
    (out / "control.md").write_text(control_markdown(metrics["control"]))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    if figures:
        plot_training_curves(trainer.state.log_history, out / "training_curves.png", title=out.name)
        plot_concept_tracking(
            tracker.history, out / "concept_tracking.png", title=f"{out.name}: red in the residual stream"
        )
        plot_control_ratios(metrics["control"], out / "control_ratios.png", title=f"{out.name}: control of red")
    render_color_transformer_card(recipe, metrics, str(out), concepts=model.concept_map).save(out / "README.md")
    logger.info("wrote %s (train %.1f s)", out, train_runtime)
    return metrics


def evaluate(model_path: str, args: argparse.Namespace) -> int:
    """The control evaluation of a color-operation transformer (M3): per-operation MSE on red-involving vs far
    examples of the test split (rebuilt from the folder's recipe.yaml), for the baseline, suppress/ablate of every
    direction concept, and each --intervention spec; writes control.json, control.md and control_ratios.png."""
    folder = pull(model_path)
    if not (folder / "recipe.yaml").is_file():
        raise StructuredConfigError("--model", f"{folder} has no recipe.yaml to rebuild the color-task test split from")
    model = AutoModel.from_pretrained(folder).eval()
    variants = control_variants(model)
    variants += [(spec, model, [spec]) for spec in args.intervention]
    have = {v[0] for v in variants}
    variants += [(f"ablate:{c}", ablate(model, c), []) for c in args.ablate if f"ablate:{c}" not in have]
    if args.prune:
        raise StructuredConfigError(
            "--prune", "residual-stream sites cannot be pruned (see structured_hf.interventions.residual); use --ablate"
        )
    report = control_evaluation(
        model, build_task_splits(load_recipe(folder / "recipe.yaml"))["test"], variants=variants
    )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "control.json").write_text(json.dumps(json_ready(report), indent=2))
    (out / "control.md").write_text(control_markdown(report))
    if not args.no_figures:
        plot_control_ratios(report, out / "control_ratios.png", title=f"Control of {args.model}")
    logger.info("\n%s", control_markdown(report))
    return 0


FAMILY = register_family(
    Family(
        name="color_transformer",
        config_class=ColorTransformerConfig,
        model_class=ColorTransformerModel,
        model_types=(ColorTransformerConfig.model_type,),
        validate=validate,
        build=build,
        datasets=build_datasets,
        run=run,
        card=render_from_folder,
        evaluate=evaluate,
        description="a small transformer computing color operations; concepts in its residual stream (M3)",
        extras={"relearning_task": "color_operations"},
    )
)
