"""Run a ``pretrained`` recipe end to end: anchored fine-tuning (full or LoRA), save, evaluate.

Outputs in ``output_dir``: the fine-tuned model (``config.json`` with the concept map + ``model.safetensors``) or,
with LoRA, the adapter with ``structured_concepts.json`` beside it; the tokenizer; ``recipe.yaml``;
``metrics.json`` (validation loss and perplexity, tokens/s, the forget/retain losses of suppression and deletion);
``language_evaluation.json`` / ``.md``; ``log_history.json``. With LoRA the adapter is merged before evaluation and
surgery (deletion edits plain weights).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.lm_data import LM_DATA_KEYS, LMDataSpec, labelled_chunks
from ..evaluation.language import evaluate_language_model, language_markdown
from ..training.recipe import Recipe, build_trainer
from .adapters import save_adapter_concepts
from .recipe import PretrainedSpec
from .sites import attach_sites

logger = logging.getLogger(__name__)
PROMPTS = ("And they smote the", "And he said unto his servants,")


def validation_lm_loss(trainer: Any) -> float:
    """The language-model loss alone on the validation blocks (every regularizer weight at 0 for the pass)."""
    saved = dict(trainer.hparams)
    trainer.hparams.update({r.spec.name: 0.0 for r in trainer.bound_regularizers})
    trainer.hparams["reconstruction"] = 1.0
    try:
        return float(trainer.evaluate(metric_key_prefix="eval_lm")["eval_lm_loss"])
    finally:
        trainer.hparams.clear()
        trainer.hparams.update(saved)


def _train_and_save(recipe: Recipe, callbacks: list, run: Any = None) -> tuple[Any, Any, float]:
    """Build, train, save (the runner's own folder handling when called without the experiment runner's)."""
    out = Path(recipe.output_dir)
    trainer = build_trainer(recipe, callbacks=callbacks)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(recipe.to_yaml())
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=run)
    runtime = time.perf_counter() - start
    trainer.save_model(str(out))
    return trainer, result, runtime


def run_pretrained_experiment(
    recipe: Recipe,
    run: Any = None,
    figures: bool = True,
    animation: bool = True,
    evaluate: bool = True,
    train_and_save: Callable | None = None,
) -> dict[str, Any]:
    """Fine-tune the recipe's pretrained model with its anchoring terms, save it and evaluate it (main process).

    ``train_and_save(recipe, callbacks, run) -> (trainer, train result, seconds)`` is the experiment runner's (run
    folder bookkeeping, resume); without it the model is trained in ``output_dir`` directly (``run``: a checkpoint
    to resume from, or None). ``figures`` / ``animation`` are accepted for the runner's common signature (this
    runner draws none).
    """
    spec = PretrainedSpec.from_dict(recipe.model)
    out = Path(recipe.output_dir)
    trainer, result, runtime = (train_and_save or _train_and_save)(recipe, [], run)
    eval_loss = validation_lm_loss(trainer)  # every process: evaluation gathers across them
    if not trainer.is_world_process_zero():
        return {}
    model = trainer.model
    lora = hasattr(model, "peft_config")
    if lora:
        save_adapter_concepts(out, model.get_base_model().config.concepts, spec.source)
    if lora:
        model = attach_sites(model.merge_and_unload())  # deletion and evaluation edit plain weights
    steps = trainer.state.global_step
    block = len(trainer.train_dataset[0]["input_ids"])
    tokens = (
        steps
        * trainer.args.per_device_train_batch_size
        * trainer.args.gradient_accumulation_steps
        * trainer.args.world_size
        * block
    )
    metrics: dict[str, Any] = {
        "eval_loss": eval_loss,
        "eval_perplexity": math.exp(eval_loss),
        "train_runtime_s": runtime,
        "train_steps": steps,
        "train_tokens": tokens,
        "train_tokens_per_second": tokens / runtime,
        "train_loss": result.training_loss,
        "lora": lora,
        "seed": recipe.seed,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    notes = getattr(trainer.model, "structured_notes", None)
    if notes:
        metrics["notes"] = notes
    chunks = labelled_chunks(LMDataSpec.from_dict({k: v for k, v in recipe.data.items() if k in LM_DATA_KEYS}))
    chunks["test"].save_to_disk(str(out / "heldout"))  # scripts/evaluate.py --model OUT evaluates on these
    if evaluate:
        report = evaluate_language_model(model.eval(), trainer.processing_class, chunks["test"], prompts=PROMPTS)
        (out / "language_evaluation.json").write_text(json.dumps(report, indent=2))
        (out / "language_evaluation.md").write_text(language_markdown(report))
        metrics["language"] = report["summary"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    logger.info("wrote %s (train %.1f s, eval perplexity %.2f)", out, runtime, metrics["eval_perplexity"])
    return metrics


__all__ = ["run_pretrained_experiment", "validation_lm_loss"]
