"""Run a recipe end to end: train, save a loadable checkpoint, evaluate, draw figures, write the model card.

`scripts/train.py` is a thin command-line wrapper around :func:`run_experiment`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from .evaluation import evaluate_color_model
from .hub import render_color_model_card
from .training import build_trainer
from .training.recipe import Recipe
from .visualization import plot_color_model_latents, plot_training_curves

logger = logging.getLogger(__name__)


def run_experiment(recipe: Recipe, resume_from_checkpoint: str | bool | None = None, figures: bool = True) -> dict[str, Any]:
    """Train ``recipe`` and write everything to ``recipe.output_dir``; returns the metrics.

    Outputs: ``config.json`` + ``model.safetensors`` (load with ``AutoModel.from_pretrained``), ``recipe.yaml``,
    ``metrics.json``, ``log_history.json``, ``latents.png``, ``training_curves.png`` and a model card ``README.md``.
    """
    out = Path(recipe.output_dir)
    trainer = build_trainer(recipe)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(recipe.to_yaml())
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    train_runtime = time.perf_counter() - start
    trainer.save_model(str(out))  # config.json + model.safetensors, main process only
    if not trainer.is_world_process_zero():
        return {}

    model = trainer.model
    metrics = evaluate_color_model(model)
    metrics.update(
        train_runtime_s=train_runtime,
        train_steps=trainer.state.global_step,
        train_steps_per_second=trainer.state.global_step / train_runtime,
        train_loss=result.training_loss,
        num_parameters=sum(p.numel() for p in model.parameters()),
        seed=recipe.seed,
    )
    if trainer.eval_dataset is not None:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    if figures:
        plot_color_model_latents(model, out / "latents.png", title=f"{out.name}: latent space (bottleneck)")
        plot_training_curves(trainer.state.log_history, out / "training_curves.png", title=out.name)
    render_color_model_card(recipe, metrics, str(out)).save(out / "README.md")
    logger.info("wrote %s (train %.1f s)", out, train_runtime)
    return metrics
