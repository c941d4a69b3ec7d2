#!/usr/bin/env python
"""Run many trainings from one command and write one summary table.

    python scripts/sweep.py configs/color_autoencoder/ex1.8-regularizer-subsets.yaml      # the recipe's `sweep:` key
    python scripts/sweep.py configs/color_autoencoder/ex1.7-sparse-labels.yaml --seeds 0-4  # seeds of any recipe
    python scripts/sweep.py configs/color_autoencoder/ex1.6-widening-smooth.yaml \\
        configs/color_autoencoder/ex1.6-widening-stepped.yaml --output_dir outputs/ex1.6      # several recipes

Color-autoencoder runs that differ only in seed (and regularizer weights) train together as one batched model, N weight
sets in one process (structured_hf/training/batched.py; --sequential: one after the other, with per-step logs and
figures; --batched: fail instead of falling back when a recipe cannot be batched). Each run is written to its own folder
(checkpoint, metrics.json, log_history.json; figures with --figures or `sweep: {figures: true}`). The summary goes to
OUT/summary.json and OUT/summary.md (OUT: --output_dir, or the recipe's output_dir for a single recipe); with 2 to 8
runs also OUT/loss_comparison.png and OUT/reconstruction_comparison.png (total and reconstruction loss per run,
with curriculum phase starts). The sweep format is documented in
structured_hf/training/sweep.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers.utils import logging as hf_logging

from structured_hf.errors import StructuredConfigError
from structured_hf.evaluation.sweep import parse_seeds
from structured_hf.training import load_recipe
from structured_hf.training.recipe import parse_set_overrides
from structured_hf.training.sweep import (
    expand_sweep,
    plot_sweep_losses,
    run_sweep,
    run_sweep_batched,
    sweep_figures,
    write_summary,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+", help="recipe YAML file(s)")
    p.add_argument("--output_dir", help="where runs and the summary go (required with several recipes)")
    p.add_argument(
        "--seeds", help="seeds for every recipe: a range (0-4), a list (0,3,7) or both; overrides sweep.seeds"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field of every recipe by dotted key; VALUE is parsed as YAML (repeatable)",
    )
    p.add_argument("--figures", action="store_true", help="draw each run's figures (PNG + GIF); slower")
    p.add_argument("--dry_run", action="store_true", help="list the runs and exit")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--sequential",
        action="store_true",
        help="train runs one after the other (default for other families, and with --figures)",
    )
    mode.add_argument(
        "--batched",
        action="store_true",
        help="require batched training (an error names what prevents it instead of a fallback)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    try:
        if len(args.configs) > 1 and not args.output_dir:
            raise StructuredConfigError("--output_dir", "is required with several recipes")
        overrides = parse_set_overrides(args.set)
        if args.seeds:
            overrides["sweep.seeds"] = parse_seeds(args.seeds)
        runs, figures = [], args.figures
        for path in args.configs:
            recipe_overrides = dict(overrides)
            label = None
            if len(args.configs) > 1:
                label = Path(path).stem
                recipe_overrides["output_dir"] = str(Path(args.output_dir) / label)
            elif args.output_dir:
                recipe_overrides["output_dir"] = args.output_dir
            recipe = load_recipe(path, recipe_overrides)
            figures = figures or sweep_figures(recipe)
            runs += expand_sweep(recipe, label=label)
        out = Path(args.output_dir or recipe.output_dir)
        if len({r.recipe.output_dir for r in runs}) != len(runs):
            raise StructuredConfigError("--output_dir", "two runs would write to the same folder")
    except StructuredConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(runs)} run(s) -> {out}")
    if args.dry_run:
        for run in runs:
            print(f"  {run.name}: seed {run.seed}, regularizers {list(run.regularizers)} -> {run.recipe.output_dir}")
        return 0
    log = lambda line: print(line, flush=True)  # noqa: E731
    try:
        if args.sequential or (figures and not args.batched):
            rows = run_sweep(runs, figures=figures, log=log)
        else:
            rows = run_sweep_batched(runs, log=log, force=args.batched)
    except StructuredConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    json_path, md_path = write_summary(rows, out, title=f"Sweep: {', '.join(Path(c).name for c in args.configs)}")
    print(f"wrote {json_path} and {md_path}")
    if 2 <= len(runs) <= 8:
        for key, name, title in (
            ("loss", "loss_comparison.png", "total training loss"),
            ("term/reconstruction", "reconstruction_comparison.png", "reconstruction loss"),
        ):
            figure = plot_sweep_losses(runs, out / name, key=key, title=f"{title} per run (dotted: phase starts)")
            if figure:
                print(f"wrote {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
