#!/usr/bin/env python
"""Train a structured_hf model from a YAML recipe.

    accelerate launch --config_file configs/accelerate/cpu.yaml scripts/train.py configs/color_autoencoder/default.yaml \
        [--output_dir DIR] [--seed N] [--max_steps N] [--set training.logging_steps=10 ...] [--resume_from_checkpoint [DIR]]
        [--push_to_hub [--hub_model_id NAME] [--hub_private_repo]]

Writes the checkpoint (config.json + model.safetensors), recipe.yaml, metrics.json, figures and a model card README.md
into the output folder. Plain `python scripts/train.py ...` works too (one process). With --push_to_hub the folder is
then uploaded with structured_hf.hub.push_output_dir (never training_args.bin or checkpoints); the token comes from
HF_TOKEN or `hf auth login`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from transformers.utils import logging as hf_logging

from structured_hf.errors import CheckpointError, StructuredConfigError
from structured_hf.experiment import run_experiment
from structured_hf.hub import push_output_dir
from structured_hf.training import load_recipe
from structured_hf.training.recipe import parse_set_overrides


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="recipe YAML file (e.g. configs/color_autoencoder/default.yaml)")
    p.add_argument("--output_dir", help="where to write the checkpoint, metrics and figures (overrides the recipe)")
    p.add_argument("--seed", type=int, help="random seed for weights, sampling and labels (overrides the recipe)")
    p.add_argument("--max_steps", type=int, help="number of optimizer steps (overrides training.max_steps)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe field by dotted key; VALUE is parsed as YAML (repeatable)",
    )
    p.add_argument(
        "--resume_from_checkpoint",
        nargs="?",
        const=True,
        default=None,
        help="resume from a checkpoint folder, or from the newest complete one in output_dir when given no "
        "value (damaged or incomplete checkpoints are skipped with a warning)",
    )
    p.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="replace the run in a non-empty output_dir (its files are deleted first; only a structured_hf "
        "run folder is ever emptied)",
    )
    p.add_argument(
        "--allow_recipe_change",
        action="store_true",
        help="with --resume_from_checkpoint: continue although the recipe differs from the checkpoint's",
    )
    p.add_argument("--no_figures", action="store_true", help="skip the PNG figures")
    p.add_argument(
        "--push_to_hub",
        action="store_true",
        help="after training, upload the output folder to a Hub model repo (token: HF_TOKEN or `hf auth login`)",
    )
    p.add_argument(
        "--hub_model_id",
        metavar="NAME",
        help="repo for --push_to_hub, 'user/name' or 'name' (default: the output folder's name)",
    )
    p.add_argument("--hub_private_repo", action="store_true", help="create the --push_to_hub repo as private")
    args = p.parse_args(argv)
    if args.max_steps is not None and args.max_steps < 1:
        p.error(f"--max_steps must be at least 1, got {args.max_steps}")
    if args.allow_recipe_change and not args.resume_from_checkpoint:
        p.error("--allow_recipe_change only applies with --resume_from_checkpoint")
    if (args.hub_model_id or args.hub_private_repo) and not args.push_to_hub:
        p.error("--hub_model_id and --hub_private_repo only apply with --push_to_hub")
    return args


def overrides_from(args: argparse.Namespace) -> dict:
    overrides = parse_set_overrides(args.set)
    for key, name in (("output_dir", "output_dir"), ("seed", "seed"), ("training.max_steps", "max_steps")):
        if getattr(args, name) is not None:
            overrides[key] = getattr(args, name)
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hf_logging.set_verbosity_warning()
    try:
        recipe = load_recipe(args.config, overrides_from(args))
        if recipe.sweep is not None:
            print(
                f"note: {args.config} is a sweep file; training its base recipe only (the `sweep:` key is ignored). "
                f"Run every variant with: python scripts/sweep.py {args.config}",
                file=sys.stderr,
            )
            recipe = dataclasses.replace(recipe, sweep=None)
        metrics = run_experiment(
            recipe,
            resume_from_checkpoint=args.resume_from_checkpoint,
            figures=not args.no_figures,
            overwrite_output_dir=args.overwrite_output_dir,
            allow_recipe_change=args.allow_recipe_change,
        )
    except (StructuredConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # NonFiniteLossError / NonFiniteGradientError / NonFiniteWeightsError
        print(f"error: {e}", file=sys.stderr)
        return 1
    if metrics:
        summary = {k: metrics[k] for k in ("named_color_mse_max", "concepts", "train_runtime_s") if k in metrics}
        print(json.dumps(summary, indent=2))
    if metrics and args.push_to_hub:  # main process only: run_experiment returns {} on the others
        repo_id = args.hub_model_id or Path(recipe.output_dir).name
        try:
            info = push_output_dir(recipe.output_dir, repo_id, private=args.hub_private_repo)
        except Exception as e:  # any failure of the upload (HTTP, network, HubPushError): the run itself is saved
            print(
                f"error: push to {repo_id!r} failed: {e}\nThe run is saved in {recipe.output_dir}; "
                "push it again with structured_hf.hub.push_output_dir.",
                file=sys.stderr,
            )
            return 1
        print(f"pushed to {info.repo_url} ({info.oid[:8]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
