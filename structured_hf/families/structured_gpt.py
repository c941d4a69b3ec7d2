"""The StructuredGPT family (M4): a GPT trained from scratch on weak-labelled text, concepts anchored in its
residual stream."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from ..cards import render_model_card_from_folder
from ..cards.structured_gpt import render_from_folder
from ..data.collators import LMBlockCollator
from ..data.lm_data import LMDataSpec
from ..errors import StructuredConfigError
from ..evaluation.language import evaluate_language_model, language_markdown
from ..experiment import resume_note, train_and_save
from ..hub import pull
from ..interventions import SurgerySpec
from ..layouts import supported_model_types
from ..models.structured_gpt import StructuredGPTConfig, StructuredGPTForCausalLM
from ..pretrained import attach_sites
from ..registry import Family, register_family
from ..run_folder import RunState, prepare_output_dir
from ..training.arguments import RegularizerSpec
from ..training.recipe import Recipe, build_lm_datasets, lm_model_config, without_ids
from ..training.routing import RouteSpec
from ..training.speclist import check_spec_labels, used_labels
from ..visualization import plot_training_curves
from .common import variant_specs

logger = logging.getLogger(__name__)
# Greedy generations before/after each intervention of a GPT run (KJV-style openings: violent, deceptive, neutral).
SAMPLE_PROMPTS = ("And they smote the", "And he lied unto them, saying", "And he said unto his servants,")
# Set from the tokenizer trained on the recipe's data, never written in a structured_gpt recipe.
_TOKENIZER_FIELDS = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")


def validate(recipe: Recipe, regularizers: list[RegularizerSpec], routes: list[RouteSpec]) -> None:
    spec = LMDataSpec.from_dict(recipe.data)
    for key in _TOKENIZER_FIELDS:
        if key in recipe.model:
            raise StructuredConfigError(
                f"model.{key}", "is taken from the tokenizer trained on the data; set data.tokenizer.vocab_size instead"
            )
    context = recipe.model.get("max_position_embeddings", StructuredGPTConfig.max_position_embeddings)
    if isinstance(context, int) and context < spec.block_size:
        raise StructuredConfigError(
            "data.block_size",
            f"{spec.block_size}-token blocks do not fit the model's max_position_embeddings {context}",
        )
    concepts = spec.concepts()
    check_spec_labels(concepts, regularizers, routes)
    for c in spec.filter_concepts:
        if c not in concepts:
            raise StructuredConfigError(
                "data.filter.concepts", f"unknown concept '{c}'; the labels config has {concepts}"
            )


def build_datasets(recipe: Recipe):
    _, _, blocks = build_lm_datasets(recipe)
    return tuple(without_ids(blocks[s]) for s in ("train", "validation"))


def build(recipe: Recipe, trainer_kwargs: dict[str, Any], prepared: Any = None):
    """``prepared``: the ``(chunks, tokenizer, blocks)`` when the caller built them already; the tokenizer becomes
    the trainer's ``processing_class``, so it is saved with the model."""
    _, tokenizer, blocks = prepared if prepared is not None else build_lm_datasets(recipe)
    config = lm_model_config(recipe, tokenizer)
    set_seed(recipe.seed)  # the data build must not change the initial weights
    model = StructuredGPTForCausalLM(config)
    train_ds, eval_ds = without_ids(blocks["train"]), without_ids(blocks["validation"])
    labels = used_labels(recipe.specs.regularizers, recipe.specs.routes)
    trainer_kwargs.setdefault("data_collator", LMBlockCollator(labels))
    trainer_kwargs.setdefault("eval_data_collator", LMBlockCollator(labels))
    trainer_kwargs.setdefault("processing_class", tokenizer)
    return model, train_ds, eval_ds


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


def run(
    recipe: Recipe, run: RunState | None = None, figures: bool = True, animation: bool = True, evaluate: bool = True
) -> dict[str, Any]:
    """Train a StructuredGPT from a recipe; save model + tokenizer (``AutoTokenizer`` / ``AutoModelForCausalLM``
    load the folder), the held-out test chunks (``heldout/``, for :mod:`structured_hf.evaluation.language`), and
    metrics: validation loss and perplexity, training tokens/s and, with ``evaluate``, the per-concept forget/retain
    losses before and after suppression and deletion (``language_evaluation.json``)."""
    run = run or prepare_output_dir(recipe.output_dir, recipe.to_dict())
    out = Path(recipe.output_dir)
    chunks, tokenizer, blocks = build_lm_datasets(recipe, progress=False)
    trainer, result, train_runtime = train_and_save(recipe, [], run, lm_data=(chunks, tokenizer, blocks))
    # Every process: Trainer.evaluate gathers across processes, so rank 0 alone would wait forever under a
    # multi-process launch.
    eval_loss, eval_objective = _validation_lm_loss(trainer)
    if not trainer.is_world_process_zero():
        return {}
    chunks["test"].save_to_disk(str(out / "heldout"))
    model = trainer.model
    block_size = len(blocks["train"][0]["input_ids"])
    steps = trainer.state.global_step
    tokens = (
        steps
        * trainer.args.per_device_train_batch_size
        * trainer.args.gradient_accumulation_steps
        * trainer.args.world_size
        * block_size
    )
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
    resume_note(run, metrics)
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


def evaluate(model_path: str, args: argparse.Namespace) -> int:
    """The surprisal evaluation of a StructuredGPT (see the module docstring)."""
    surgery = [s for s in variant_specs(args) if isinstance(s, SurgerySpec)]
    if surgery:  # before anything is loaded
        flag = "--prune" if any(s.kind == "prune" for s in surgery) else "--ablate"
        raise StructuredConfigError(
            flag,
            "StructuredGPT evaluation always includes ablate:<concept> for every "
            "anchored concept; --prune does not apply to residual sites",
        )
    folder = pull(model_path)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    if model.config.model_type in supported_model_types():
        attach_sites(model)  # a fine-tuned pretrained model: its concept map is in config.json
    tokenizer = AutoTokenizer.from_pretrained(folder)
    heldout = Path(args.heldout) if args.heldout else folder / "heldout"
    if not heldout.is_dir():
        raise StructuredConfigError(
            "--heldout",
            f"no held-out chunks at {heldout}; pass --heldout DIR (a saved "
            "datasets folder with text and prob_<concept> columns)",
        )
    test = datasets.load_from_disk(str(heldout))
    extra = [(spec, model, [spec]) for spec in args.intervention]
    report = evaluate_language_model(model, tokenizer, test, extra_variants=extra, prompts=args.prompt)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "language_evaluation.json").write_text(json.dumps(report, indent=2))
    (out / "language_evaluation.md").write_text(language_markdown(report))
    logger.info("\n%s", language_markdown(report))
    if out.resolve() == Path(folder).resolve():
        card = render_model_card_from_folder(folder, str(folder))
        if card is not None:
            card.save(out / "README.md")
    return 0


FAMILY = register_family(
    Family(
        name="structured_gpt",
        config_class=StructuredGPTConfig,
        model_class=StructuredGPTForCausalLM,
        model_types=(StructuredGPTConfig.model_type,),
        validate=validate,
        build=build,
        datasets=build_datasets,
        run=run,
        card=render_from_folder,
        evaluate=evaluate,
        description="a GPT trained from scratch on weak-labelled text; concepts in its residual stream (M4)",
        # Its evaluation may write into the model folder: it re-renders the card with the new table.
        extras={"evaluates_into_model_folder": True},
    )
)
