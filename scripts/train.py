#!/usr/bin/env python
"""Train a structured_hf model from a YAML recipe.

    accelerate launch --config_file configs/accelerate/cpu.yaml scripts/train.py configs/color_autoencoder/default.yaml \
        [--output_dir DIR] [--seed N] [--max_steps N] [--set training.logging_steps=10 ...] [--resume_from_checkpoint [DIR]]

Writes the checkpoint (config.json + model.safetensors), recipe.yaml, metrics.json, figures and a model card README.md
into the output folder. Plain `python scripts/train.py ...` works too (one process).
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml
from transformers.utils import logging as hf_logging

from structured_hf.errors import StructuredConfigError
from structured_hf.experiment import run_experiment
from structured_hf.training import load_recipe


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="recipe YAML file (e.g. configs/color_autoencoder/default.yaml)")
    p.add_argument("--output_dir", help="where to write the checkpoint, metrics and figures (overrides the recipe)")
    p.add_argument("--seed", type=int, help="random seed for weights, sampling and labels (overrides the recipe)")
    p.add_argument("--max_steps", type=int, help="number of optimizer steps (overrides training.max_steps)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe field by dotted key; VALUE is parsed as YAML (repeatable)")
    p.add_argument("--resume_from_checkpoint", nargs="?", const=True, default=None,
                   help="resume from a checkpoint folder, or from the latest one in output_dir when given no value")
    p.add_argument("--no_figures", action="store_true", help="skip the PNG figures")
    return p.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict:
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StructuredConfigError("--set", f"expected KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    for key, name in (("output_dir", "output_dir"), ("seed", "seed"), ("training.max_steps", "max_steps")):
        if getattr(args, name) is not None:
            overrides[key] = getattr(args, name)
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hf_logging.set_verbosity_warning()
    try:
        recipe = load_recipe(args.config, overrides_from(args))
        metrics = run_experiment(recipe, resume_from_checkpoint=args.resume_from_checkpoint, figures=not args.no_figures)
    except StructuredConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if metrics:
        summary = {k: metrics[k] for k in ("named_color_mse_max", "concepts", "train_runtime_s") if k in metrics}
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
