"""Run a recipe end to end: train, save a loadable checkpoint, evaluate, draw figures, write the model card.

`scripts/train.py` is a thin command-line wrapper around :func:`run_experiment`. What happens after training
(evaluation, figures, metrics, the card) is the recipe's family's ``run`` step (``structured_hf/families/``); this
module keeps what every family shares: the run folder, training and saving, resume notes.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from .registry import get_family
from .run_folder import RunState, end_run, prepare_output_dir, start_run
from .training import build_trainer
from .training.recipe import Recipe, family_of

logger = logging.getLogger(__name__)


def train_and_save(recipe: Recipe, callbacks: list, run: RunState, **build_kwargs: Any):
    """Build the trainer, start the run in its folder (``run.json``, and ``recipe.yaml`` for a new run), train,
    save the checkpoint (config.json + model.safetensors, and the tokenizer when the trainer has one; main process
    only). Returns (trainer, train result, training wall time in seconds).

    Nothing is written before the trainer is built, so a recipe that fails to build leaves the folder as it was.
    """
    out = Path(recipe.output_dir)
    trainer = build_trainer(recipe, callbacks=callbacks, **build_kwargs)
    trainer.run_identity = run.identity()
    if trainer.is_world_process_zero():
        start_run(out, run, recipe.to_dict(), recipe.to_yaml())
    start = time.perf_counter()
    resume = None if run.resume_from is None else str(run.resume_from)
    result = trainer.train(resume_from_checkpoint=resume)
    train_runtime = time.perf_counter() - start
    trainer.save_model(str(out))
    return trainer, result, train_runtime


def resume_note(run: RunState, metrics: dict[str, Any]) -> None:
    """A resumed run's train_loss, runtime, steps/s and snapshot-based metrics cover only the resumed steps: say so
    in the metrics instead of passing them off as the whole run's."""
    if run.resume_from is not None:
        metrics["resumed"] = {
            "from_checkpoint": str(run.resume_from),
            "from_step": run.resumed_step,
            "note": "train_loss, train_runtime_s, steps/s, latent jitter and the evolution figures cover only the "
            "steps after the resume; log_history.json covers the whole run",
        }


def _is_main_process() -> bool:
    # Before the trainer (and its accelerator) exists: the launcher's rank. Only rank 0 writes or clears the folder.
    return int(os.environ.get("RANK", "0")) == 0


def run_experiment(
    recipe: Recipe,
    resume_from_checkpoint: str | bool | None = None,
    figures: bool = True,
    animation: bool = True,
    overwrite_output_dir: bool = False,
    allow_recipe_change: bool = False,
) -> dict[str, Any]:
    """Train ``recipe`` and write everything to ``recipe.output_dir``; returns the metrics.

    Outputs: ``config.json`` + ``model.safetensors`` (load with ``AutoModel.from_pretrained``), ``recipe.yaml``,
    ``run.json``, ``metrics.json``, ``log_history.json``, figures (``latents.png``, ``training_curves.png``,
    ``schedules.png``, ``evolution.png``, ``evolution.gif``) and a model card ``README.md``.

    One folder holds one run (see :mod:`structured_hf.run_folder`): a non-empty ``output_dir`` is refused unless
    ``overwrite_output_dir`` (the old run's files are deleted first) or ``resume_from_checkpoint`` (``True``: the
    newest complete checkpoint in the folder) is given; a resume with a recipe other than the checkpoint's is refused
    unless ``allow_recipe_change``. ``run.json`` ends with status ``finished``, or ``failed`` and the error.
    """
    run = prepare_output_dir(
        recipe.output_dir,
        recipe.to_dict(),
        overwrite=overwrite_output_dir,
        resume=resume_from_checkpoint,
        allow_recipe_change=allow_recipe_change,
        check_folder=_is_main_process(),
    )
    runner = family_of(recipe).run
    try:
        metrics = runner(recipe, run, figures=figures, animation=animation)
    except BaseException as e:
        if _is_main_process():
            end_run(recipe.output_dir, "failed", f"{type(e).__name__}: {e}")
        raise
    if metrics:
        end_run(recipe.output_dir, "finished")
    return metrics


# The family run steps moved to structured_hf/families/<family>.py; the old names still resolve (deprecated).
_MOVED = {"run_color_transformer_experiment": "color_transformer", "run_structured_gpt_experiment": "structured_gpt"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(
            f"structured_hf.experiment.{name} is deprecated: use run_experiment(recipe), or "
            f"structured_hf.families.{_MOVED[name]}.run",
            DeprecationWarning,
            stacklevel=2,
        )
        return get_family(_MOVED[name]).run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
