"""Run a recipe end to end: train, save a loadable checkpoint, evaluate, draw figures, write the model card.

`scripts/train.py` is a thin command-line wrapper around :func:`run_experiment`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .concepts import ConceptMap
from .data.colors import HUE_NAMES, NAMED_COLORS, rgb_grid
from .data.curriculum import CurriculumSampler
from .evaluation import evaluate_color_model
from .evaluation.color_tasks import concept_placement, per_operation_errors
from .evaluation.language import evaluate_language_model, language_markdown
from .evaluation.structure import color_structure, latent_jitter, loss_excursions, loss_spikes
from .evaluation.transformer_control import control_evaluation, control_markdown, plot_control_ratios
from .cards import render_color_model_card, render_color_transformer_card, render_model_card_from_folder
from .run_folder import RunState, end_run, prepare_output_dir, start_run
from .training import build_trainer
from .training.callbacks import LatentSnapshotCallback, ProbeCallback
from .training.recipe import Recipe, build_lm_datasets, build_task_splits, model_type
from .pretrained.experiment import run_pretrained_experiment
from .visualization import (
    animate_latent_evolution,
    plot_color_model_latents,
    plot_concept_tracking,
    plot_latent_evolution,
    plot_schedules,
    plot_training_curves,
)

logger = logging.getLogger(__name__)
# Greedy generations before/after each intervention of a GPT run (KJV-style openings: violent, deceptive, neutral).
SAMPLE_PROMPTS = ("And they smote the", "And he lied unto them, saying", "And he said unto his servants,")
SNAPSHOTS = 30  # latent snapshots per run, for the evolution figure, the animation and the jitter metric


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


def _train_and_save(recipe: Recipe, callbacks: list, run: RunState, **build_kwargs: Any):
    """Build the trainer, start the run in its folder (``run.json``, and ``recipe.yaml`` for a new run), train,
    save the checkpoint (config.json + model.safetensors, and the tokenizer when the trainer has one; main process
    only). Returns (trainer, train result, training wall time in seconds).

    Nothing is written before the trainer is built, so a recipe that fails to build leaves the folder as it was.
    """
    out = Path(recipe.output_dir)
    trainer = build_trainer(recipe, callbacks=callbacks, **build_kwargs)
    trainer.run_identity = {"run_id": run.run_id, "recipe_fingerprint": run.fingerprint}
    if trainer.is_world_process_zero():
        start_run(out, run, recipe.to_dict(), recipe.to_yaml())
    start = time.perf_counter()
    resume = None if run.resume_from is None else str(run.resume_from)
    result = trainer.train(resume_from_checkpoint=resume)
    train_runtime = time.perf_counter() - start
    trainer.save_model(str(out))
    return trainer, result, train_runtime


def _resume_note(run: RunState, metrics: dict[str, Any]) -> None:
    """A resumed run's train_loss, runtime, steps/s and snapshot-based metrics cover only the resumed steps: say so
    in the metrics instead of passing them off as the whole run's."""
    if run.resume_from is not None:
        metrics["resumed"] = {
            "from_checkpoint": str(run.resume_from), "from_step": run.resumed_step,
            "note": "train_loss, train_runtime_s, steps/s, latent jitter and the evolution figures cover only the "
                    "steps after the resume; log_history.json covers the whole run",
        }


def _is_main_process() -> bool:
    # Before the trainer (and its accelerator) exists: the launcher's rank. Only rank 0 writes or clears the folder.
    return int(os.environ.get("RANK", "0")) == 0


def run_experiment(recipe: Recipe, resume_from_checkpoint: str | bool | None = None, figures: bool = True,
                   animation: bool = True, overwrite_output_dir: bool = False,
                   allow_recipe_change: bool = False) -> dict[str, Any]:
    """Train ``recipe`` and write everything to ``recipe.output_dir``; returns the metrics.

    Outputs: ``config.json`` + ``model.safetensors`` (load with ``AutoModel.from_pretrained``), ``recipe.yaml``,
    ``run.json``, ``metrics.json``, ``log_history.json``, figures (``latents.png``, ``training_curves.png``,
    ``schedules.png``, ``evolution.png``, ``evolution.gif``) and a model card ``README.md``.

    One folder holds one run (see :mod:`structured_hf.run_folder`): a non-empty ``output_dir`` is refused unless
    ``overwrite_output_dir`` (the old run's files are deleted first) or ``resume_from_checkpoint`` (``True``: the
    newest complete checkpoint in the folder) is given; a resume with a recipe other than the checkpoint's is refused
    unless ``allow_recipe_change``. ``run.json`` ends with status ``finished``, or ``failed`` and the error.
    """
    run = prepare_output_dir(recipe.output_dir, recipe.to_dict(), overwrite=overwrite_output_dir,
                             resume=resume_from_checkpoint, allow_recipe_change=allow_recipe_change,
                             check_folder=_is_main_process())
    runner = {"color_transformer": run_color_transformer_experiment,
              "structured_gpt": run_structured_gpt_experiment,
              "pretrained": partial(run_pretrained_experiment, train_and_save=_train_and_save),
              }.get(model_type(recipe), _run_color_autoencoder)
    try:
        metrics = runner(recipe, run, figures=figures, animation=animation)
    except BaseException as e:
        if _is_main_process():
            end_run(recipe.output_dir, "failed", f"{type(e).__name__}: {e}")
        raise
    if metrics:
        end_run(recipe.output_dir, "finished")
    return metrics


def _run_color_autoencoder(recipe: Recipe, run: RunState, figures: bool = True,
                           animation: bool = True) -> dict[str, Any]:
    """The color autoencoder's run: train, then named-color errors, structure, stability, figures and the card."""
    out = Path(recipe.output_dir)
    probe = np.concatenate([rgb_grid(8), np.asarray([NAMED_COLORS[n] for n in HUE_NAMES])])
    max_steps = int(recipe.training.get("max_steps", 0))
    snapshots = LatentSnapshotCallback({"colors": torch.as_tensor(probe, dtype=torch.float32)}, "bottleneck",
                                       every=max(max_steps // SNAPSHOTS, 1))
    trainer, result, train_runtime = _train_and_save(recipe, [snapshots], run)
    if not trainer.is_world_process_zero():
        return {}

    model = trainer.model
    concepts = ConceptMap.parse(model.config.concepts)
    history = trainer.state.log_history
    boundaries = [start for start, _ in trainer.curriculum.boundaries()] if trainer.curriculum else []
    metrics = evaluate_color_model(model)
    metrics["hue_mse_max"] = max(metrics["named_color_mse"][name] for name in HUE_NAMES)
    metrics["structure"] = color_structure(model, site="bottleneck", plane=_hue_plane(concepts),
                                           data_colors=_final_training_colors(trainer))
    metrics["stability"] = {"loss_spikes": loss_spikes(history, boundaries),
                            # The task loss alone: weight schedules that change at a phase start move the total loss
                            # without any change in how well the model reconstructs.
                            "reconstruction_spikes": loss_spikes(history, boundaries, key="term/reconstruction"),
                            "reconstruction_excursions": loss_excursions(history, key="term/reconstruction"),
                            "latent_jitter": latent_jitter(snapshots.snapshots)}
    metrics.update(
        train_runtime_s=train_runtime,
        train_steps=trainer.state.global_step,
        train_steps_per_second=trainer.state.global_step / train_runtime,
        train_loss=result.training_loss,
        num_parameters=sum(p.numel() for p in model.parameters()),
        seed=recipe.seed,
    )
    _resume_note(run, metrics)
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
        schedules["learning_rate"] = trainer.args.parameter_schedules.get("learning_rate")
        if trainer.curriculum is not None and trainer.curriculum.vibrancy_min is not None:
            schedules["data: vibrancy_min"] = trainer.curriculum.vibrancy_min
        schedules = {k: v for k, v in schedules.items() if v is not None and not (k == "reconstruction" and v.is_constant)}
        phases = trainer.curriculum.boundaries() if trainer.curriculum else []
        plot_schedules(schedules, trainer.state.global_step, out / "schedules.png", phases=phases,
                       title=f"{out.name}: schedules")
        plot_latent_evolution(snapshots.snapshots, snapshots.steps, probe, out / "evolution.png",
                              title=f"{out.name}: latent evolution")
        if animation:
            animate_latent_evolution(snapshots.snapshots, snapshots.steps, probe, out / "evolution.gif", schedules)
    render_color_model_card(recipe, metrics, str(out), concepts=model.concept_map).save(out / "README.md")
    logger.info("wrote %s (train %.1f s)", out, train_runtime)
    return metrics


def run_color_transformer_experiment(recipe: Recipe, run: RunState | None = None, figures: bool = True,
                                     animation: bool = True) -> dict[str, Any]:
    """Train a color-operation transformer; metrics: per-operation test error (red-involving vs far from red) and
    the red concept's cosine at every residual site, tracked during training."""
    run = run or prepare_output_dir(recipe.output_dir, recipe.to_dict())
    out = Path(recipe.output_dir)
    splits = build_task_splits(recipe)
    max_steps = int(recipe.training.get("max_steps", 0))
    tracker = ProbeCallback(lambda m: concept_placement(m, splits["validation"], limit=1024),
                            every=max(max_steps // 20, 1))
    trainer, result, train_runtime = _train_and_save(recipe, [tracker], run)
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
    _resume_note(run, metrics)
    metrics["test_mse_max"] = max(v["all"] for v in metrics["test_mse"].values())
    # Suppression and deletion of every direction concept, per operation (red-involving vs far-from-red ratios).
    metrics["control"] = control_evaluation(model, splits["test"])
    (out / "control.md").write_text(control_markdown(metrics["control"]))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    if figures:
        plot_training_curves(trainer.state.log_history, out / "training_curves.png", title=out.name)
        plot_concept_tracking(tracker.history, out / "concept_tracking.png", title=f"{out.name}: red in the residual stream")
        plot_control_ratios(metrics["control"], out / "control_ratios.png", title=f"{out.name}: control of red")
    render_color_transformer_card(recipe, metrics, str(out), concepts=model.concept_map).save(out / "README.md")
    logger.info("wrote %s (train %.1f s)", out, train_runtime)
    return metrics


def _validation_lm_loss(trainer: Any) -> tuple[float, float]:
    """``(language-model loss, training objective)`` on the validation blocks.

    Trainer's ``eval_loss`` is whatever ``compute_loss`` returns: for an anchored run that is the LM loss *plus*
    the weighted regularizer terms (with the validation chunks' label probabilities as soft labels), so its exp is
    not a perplexity and anchored and unregularized runs would not compare. The perplexity comes from a second
    pass with every regularizer weight at 0 (which skips the terms); the objective is kept for reference.
    """
    objective = trainer.evaluate()["eval_loss"]
    saved = dict(trainer.hparams)
    trainer.hparams.update({r.spec.name: 0.0 for r in trainer.bound_regularizers})
    trainer.hparams["reconstruction"] = 1.0
    try:
        lm_loss = trainer.evaluate(metric_key_prefix="eval_lm")["eval_lm_loss"]
    finally:
        trainer.hparams.clear()
        trainer.hparams.update(saved)
    return float(lm_loss), float(objective)


def run_structured_gpt_experiment(recipe: Recipe, run: RunState | None = None, figures: bool = True, animation: bool = True,
                                  evaluate: bool = True) -> dict[str, Any]:
    """Train a StructuredGPT from a recipe; save model + tokenizer (``AutoTokenizer`` / ``AutoModelForCausalLM``
    load the folder), the held-out test chunks (``heldout/``, for :mod:`structured_hf.evaluation.language`), and
    metrics: validation loss and perplexity, training tokens/s and, with ``evaluate``, the per-concept forget/retain
    losses before and after suppression and deletion (``language_evaluation.json``)."""
    run = run or prepare_output_dir(recipe.output_dir, recipe.to_dict())
    out = Path(recipe.output_dir)
    chunks, tokenizer, blocks = build_lm_datasets(recipe, progress=False)
    trainer, result, train_runtime = _train_and_save(recipe, [], run, lm_data=(chunks, tokenizer, blocks))
    if not trainer.is_world_process_zero():
        return {}
    chunks["test"].save_to_disk(str(out / "heldout"))
    model = trainer.model
    block_size = len(blocks["train"][0]["input_ids"])
    steps = trainer.state.global_step
    tokens = steps * trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps \
        * trainer.args.world_size * block_size
    eval_loss, eval_objective = _validation_lm_loss(trainer)
    metrics: dict[str, Any] = {
        "eval_loss": eval_loss,
        "eval_perplexity": float(np.exp(eval_loss)),
        "eval_objective": eval_objective,
        "train_runtime_s": train_runtime,
        "train_steps": steps,
        "train_tokens": tokens,  # block positions including padding (what the model computes on)
        "train_tokens_per_second": tokens / train_runtime,
        "train_loss": result.training_loss,
        "train_chunks": len(chunks["train"]),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "seed": recipe.seed,
    }
    _resume_note(run, metrics)
    if evaluate:
        report = evaluate_language_model(model, tokenizer, chunks["test"], prompts=SAMPLE_PROMPTS)
        (out / "language_evaluation.json").write_text(json.dumps(report, indent=2))
        (out / "language_evaluation.md").write_text(language_markdown(report))
        metrics["language"] = report["summary"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    if figures:
        plot_training_curves(trainer.state.log_history, out / "training_curves.png", title=out.name)
    card = render_model_card_from_folder(out, str(out))
    if card is not None:
        card.save(out / "README.md")
    logger.info("wrote %s (train %.1f s, eval perplexity %.2f)", out, train_runtime, metrics["eval_perplexity"])
    return metrics
