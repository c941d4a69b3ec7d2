"""The color autoencoder family (M1/M2): RGB -> bottleneck -> RGB, concepts anchored in the bottleneck."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from ..cards.color_autoencoder import render_color_model_card, render_from_folder
from ..checkpoints import load_pretrained
from ..concepts import ConceptMap
from ..data.color_datasets import build_color_dataset, check_color_spec, colors_from_spec
from ..data.colors import HUE_NAMES, NAMED_COLORS, resolve_colors, rgb_grid
from ..data.curriculum import Curriculum, CurriculumSampler
from ..data.labels import parse_labelers
from ..errors import StructuredConfigError
from ..evaluation import evaluate_color_model, evaluate_model
from ..evaluation.structure import color_structure, latent_jitter, loss_excursions, loss_spikes
from ..experiment import resume_note, train_and_save
from ..models.color_autoencoder import ColorAutoencoderConfig, ColorAutoencoderModel
from ..registry import Family, register_family
from ..run_folder import RunState
from ..training.callbacks import LatentSnapshotCallback
from ..training.recipe import Recipe, check_data_keys, model_config
from ..visualization import (
    animate_latent_evolution,
    plot_color_model_latents,
    plot_latent_evolution,
    plot_schedules,
    plot_training_curves,
)
from .common import variant_specs

logger = logging.getLogger(__name__)
SNAPSHOTS = 30  # latent snapshots per run, for the evolution figure, the animation and the jitter metric


def validate(recipe: Recipe, regularizers: list, routes: list) -> None:
    check_data_keys(recipe)
    if "train" not in recipe.data:
        raise StructuredConfigError("data.train", "is required (e.g. {grid: rgb, size: 8})")
    for split in ("train", "eval"):  # grid sizes and listed colors, checked now rather than when data is built
        if recipe.data.get(split) is not None:
            check_color_spec(recipe.data[split], f"data.{split}")
    parse_labelers(recipe.data.get("labels"))
    Curriculum.from_dict(recipe.data.get("curriculum"))


def build_datasets(recipe: Recipe) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Train (and eval) datasets of colors with label-probability columns."""
    labelers = parse_labelers(recipe.data.get("labels"))
    colors, weights = colors_from_spec(recipe.data["train"], "data.train")
    train = build_color_dataset(colors, labelers, sample_weights=weights)
    eval_ds = None
    if recipe.data.get("eval") is not None:
        eval_colors, _ = colors_from_spec(recipe.data["eval"], "data.eval")
        exact = recipe.data.get("eval_labels") or {}
        if not isinstance(exact, Mapping):
            raise StructuredConfigError("data.eval_labels", f"expected label -> list of colors, got {exact!r}")
        exact_rgb = {}
        for name, listed in exact.items():
            if name not in labelers:
                raise StructuredConfigError(
                    f"data.eval_labels.{name}", f"unknown label; data.labels has {sorted(labelers)}"
                )
            if not isinstance(listed, Sequence) or isinstance(listed, str):
                raise StructuredConfigError(f"data.eval_labels.{name}", f"expected a list of colors, got {listed!r}")
            exact_rgb[name] = resolve_colors(listed, f"data.eval_labels.{name}")
        eval_ds = build_color_dataset(eval_colors, labelers, exact_labels=exact_rgb)
    return train, eval_ds


def build(recipe: Recipe, trainer_kwargs: dict[str, Any], prepared: Any = None):
    model = ColorAutoencoderModel(model_config(recipe))
    train_ds, eval_ds = build_datasets(recipe)
    return model, train_ds, eval_ds


def _hue_plane(concepts: ConceptMap) -> tuple[int, int]:
    """The plane the hue wheel is meant to lie in: the first 2-axes concept, else axes (0, 1)."""
    for c in concepts:
        if c.axes is not None and len(c.axes) == 2:
            return tuple(c.axes)  # type: ignore[return-value]
    return (0, 1)


def _final_training_colors(trainer) -> np.ndarray | None:
    """The training colors the run could draw at its last step (a curriculum's final phase), or None if unknown."""
    columns = getattr(trainer.train_dataset, "columns", None)
    if columns is None or "colors" not in columns:
        return None
    colors = columns["colors"].numpy()
    if trainer.curriculum is None:
        return colors
    last = max(trainer.state.global_step - 1, 0)
    return colors[CurriculumSampler(colors, trainer.curriculum, samples_per_step=1, num_steps=1).eligible(last)]


def run(recipe: Recipe, run: RunState, figures: bool = True, animation: bool = True) -> dict[str, Any]:
    """The color autoencoder's run: train, then named-color errors, structure, stability, figures and the card."""
    out = Path(recipe.output_dir)
    probe = np.concatenate([rgb_grid(8), np.asarray([NAMED_COLORS[n] for n in HUE_NAMES])])
    max_steps = int(recipe.training.get("max_steps", 0))
    snapshots = LatentSnapshotCallback(
        {"colors": torch.as_tensor(probe, dtype=torch.float32)}, "bottleneck", every=max(max_steps // SNAPSHOTS, 1)
    )
    trainer, result, train_runtime = train_and_save(recipe, [snapshots], run)
    if not trainer.is_world_process_zero():
        return {}

    model = trainer.model
    concepts = ConceptMap.of(model)
    history = trainer.state.log_history
    boundaries = [start for start, _ in trainer.curriculum.boundaries()] if trainer.curriculum else []
    metrics = evaluate_color_model(model)
    metrics["hue_mse_max"] = max(metrics["named_color_mse"][name] for name in HUE_NAMES)
    metrics["structure"] = color_structure(
        model, site="bottleneck", plane=_hue_plane(concepts), data_colors=_final_training_colors(trainer)
    )
    metrics["stability"] = {
        "loss_spikes": loss_spikes(history, boundaries),
        # The task loss alone: weight schedules that change at a phase start move the total loss
        # without any change in how well the model reconstructs.
        "reconstruction_spikes": loss_spikes(history, boundaries, key="term/reconstruction"),
        "reconstruction_excursions": loss_excursions(history, key="term/reconstruction"),
        "latent_jitter": latent_jitter(snapshots.snapshots),
    }
    metrics.update(
        train_runtime_s=train_runtime,
        train_steps=trainer.state.global_step,
        train_steps_per_second=trainer.state.global_step / train_runtime,
        train_loss=result.training_loss,
        num_parameters=sum(p.numel() for p in model.parameters()),
        seed=recipe.seed,
    )
    resume_note(run, metrics)
    if trainer.schedule_callback.events:
        metrics["reactive_events"] = trainer.schedule_callback.events
    if trainer.eval_dataset is not None:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "log_history.json").write_text(json.dumps(history, indent=1))
    if figures:
        plot_color_model_latents(model, out / "latents.png", title=f"{out.name}: latent space (bottleneck)")
        plot_training_curves(history, out / "training_curves.png", title=out.name)
        schedules = dict(trainer.schedule_callback.schedules)
        schedules["learning_rate"] = trainer.args.schedules.get("learning_rate")
        if trainer.curriculum is not None and trainer.curriculum.vibrancy_min is not None:
            schedules["data: vibrancy_min"] = trainer.curriculum.vibrancy_min
        schedules = {
            k: v for k, v in schedules.items() if v is not None and not (k == "reconstruction" and v.is_constant)
        }
        phases = trainer.curriculum.boundaries() if trainer.curriculum else []
        plot_schedules(
            schedules, trainer.state.global_step, out / "schedules.png", phases=phases, title=f"{out.name}: schedules"
        )
        plot_latent_evolution(
            snapshots.snapshots, snapshots.steps, probe, out / "evolution.png", title=f"{out.name}: latent evolution"
        )
        if animation:
            animate_latent_evolution(snapshots.snapshots, snapshots.steps, probe, out / "evolution.gif", schedules)
    render_color_model_card(recipe, metrics, str(out), concepts=model.concept_map).save(out / "README.md")
    logger.info("wrote %s (train %.1f s)", out, train_runtime)
    return metrics


def evaluate(model_path: str, args: argparse.Namespace) -> int:
    """Per-color MSE tables, r² scores and figures for the baseline and every requested variant."""
    model = load_pretrained(model_path)
    result = evaluate_model(
        model,
        variant_specs(args),
        args.output_dir,
        grid_size=args.grid_size,
        anchor=args.anchor,
        figures=not args.no_figures,
        title=f"Evaluation of {args.model}",
        save_variants=args.save_variants,
    )
    for name, score in result["scores"].items():
        logger.info("%-28s r² = %.4f", name, score)
    return 0


FAMILY = register_family(
    Family(
        name="color_autoencoder",
        config_class=ColorAutoencoderConfig,
        model_class=ColorAutoencoderModel,
        model_types=(ColorAutoencoderConfig.model_type,),
        validate=validate,
        build=build,
        datasets=build_datasets,
        run=run,
        card=render_from_folder,
        evaluate=evaluate,
        batched_seeds=True,
        description="RGB -> bottleneck -> RGB autoencoder; concepts anchored in the bottleneck (M1/M2)",
    )
)
