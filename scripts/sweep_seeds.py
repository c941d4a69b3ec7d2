#!/usr/bin/env python
"""Seed sweep: train a recipe with several seeds, evaluate the same variants on each, summarize the scores
(min/mean/max) and pick the best run on the Pareto front of (reconstruction, anchor error, score).

    python scripts/sweep_seeds.py configs/color_autoencoder/ex2.9.1-delete-red-k5.yaml --seeds 0-19 \
        --prune red --output_dir outputs/sweep-ex2.9.1

Writes OUT/sweep.json (per-seed named-color MSE and scores, the summary) and OUT/sweep.md; with --save_models each
seed's model goes to OUT/seed-<N>.

Color-autoencoder seeds train together as one batched model with N weight sets (structured_hf/training/batched.py:
each seed keeps its initialization, data order, weak-label draws and schedule; 20 seeds take about as long as 2-3
single runs). --sequential trains them one after the other through the Trainer; --batched fails, naming the reason,
where the default would fall back to sequential (another model family, a curriculum, gradient routing, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

import structured_hf  # noqa: F401
from structured_hf.errors import StructuredConfigError
from structured_hf.evaluation import build_variants, evaluate_color_model, evaluate_variants
from structured_hf.evaluation.relearning import train_recipe
from structured_hf.evaluation.sweep import parse_seeds, summarize_sweep, sweep_markdown
from structured_hf.evaluation.tables import json_ready
from structured_hf.interventions import SurgerySpec, parse_spec
from structured_hf.training import load_recipe
from structured_hf.training.recipe import parse_set_overrides
from structured_hf.training.batched import check_batchable, train_batched

logger = logging.getLogger("sweep")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="recipe YAML")
    p.add_argument("--seeds", default="0-2", help="seeds: a range (0-19), a list (0,3,7) or both (default 0-2)")
    p.add_argument(
        "--intervention",
        action="append",
        default=[],
        metavar="SPEC",
        help="intervention spec evaluated on every seed (repeatable), e.g. suppress:red",
    )
    p.add_argument("--ablate", action="append", default=[], metavar="CONCEPT", help="ablate CONCEPT (repeatable)")
    p.add_argument("--prune", action="append", default=[], metavar="CONCEPT", help="prune CONCEPT (repeatable)")
    p.add_argument(
        "--primary", default=None, help="variant whose score drives the Pareto pick (default: the first variant)"
    )
    p.add_argument(
        "--anchor_concept",
        default=None,
        help="direction concept whose cosine gives the anchor error (default: the first direction concept)",
    )
    p.add_argument("--grid_size", type=int, default=10, help="RGB grid size for the scores")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe field by dotted key; VALUE is parsed as YAML (repeatable)",
    )
    p.add_argument("--save_models", action="store_true", help="save each seed's model under OUT/seed-<N>")
    p.add_argument("--output_dir", required=True, help="folder for sweep.json and sweep.md")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--sequential", action="store_true", help="train the seeds one after the other")
    mode.add_argument(
        "--batched", action="store_true", help="require batched training (error instead of the sequential fallback)"
    )
    return p.parse_args(argv)


def train_seeds(recipes: list, sequential: bool = False, force: bool = False) -> list[tuple]:
    """``(model, train seconds)`` per recipe: batched when the recipes allow it (the train time is the batch's share),
    else one after the other. ``force``: raise the reason a batch is impossible instead of falling back."""
    if not sequential:
        try:
            check_batchable(recipes)
        except StructuredConfigError as e:
            if force:
                raise
            logger.info("training the seeds one after the other: %s", e)
        else:
            models, info = train_batched(recipes)
            logger.info("%d seeds trained as one batch in %.1f s", len(recipes), info["train_runtime_s"])
            return [(m, info["train_runtime_s"] / len(recipes)) for m in models]
    return [train_recipe(recipe) for recipe in recipes]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hf_logging.set_verbosity_error()
    out = Path(args.output_dir)
    try:
        seeds = parse_seeds(args.seeds)
        specs = [parse_spec(s) for s in args.intervention]
        specs += [SurgerySpec("ablate", concept=c) for c in args.ablate]
        specs += [SurgerySpec("prune", concept=c) for c in args.prune]
        overrides = parse_set_overrides(args.set)
        recipes = [
            load_recipe(
                args.config,
                {**overrides, "seed": seed, "output_dir": str(out / f"seed-{seed}"), "training.disable_tqdm": True},
            )
            for seed in seeds
        ]
        trained = train_seeds(recipes, sequential=args.sequential, force=args.batched)
        runs = []
        for seed, (model, train_s) in zip(seeds, trained):
            start = time.perf_counter()
            result = evaluate_variants(build_variants(model, specs), grid_size=args.grid_size)
            metrics = evaluate_color_model(model)
            concepts = [c for c in model.config.concepts if "direction" in c]
            anchor = args.anchor_concept or (concepts[0]["name"] if concepts else None)
            cos = metrics["concepts"].get(anchor, {}).get("cosine") if anchor else None
            runs.append(
                {
                    "seed": seed,
                    "train_runtime_s": train_s,
                    "eval_runtime_s": time.perf_counter() - start,
                    "reconstruction": metrics["named_color_mse_max"],
                    "anchor_error": None if cos is None else 1.0 - cos,
                    "scores": result["scores"],
                    "named_color_mse": result["named_color_mse"],
                }
            )
            logger.info(
                "seed %d: train %.1f s, scores %s", seed, train_s, {k: round(v, 4) for k, v in result["scores"].items()}
            )
            if args.save_models:
                model.save_pretrained(out / f"seed-{seed}")
        summary = summarize_sweep(runs, args.primary)
    except StructuredConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(json_ready({"summary": summary, "runs": runs}), indent=1))
    (out / "sweep.md").write_text(sweep_markdown(summary, runs))
    logger.info("\n%s", sweep_markdown(summary, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
