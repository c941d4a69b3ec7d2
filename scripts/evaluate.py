#!/usr/bin/env python
"""Evaluate a trained color model and its interventions: per-color MSE tables, r² scores, figures.

    python scripts/evaluate.py --model outputs/ex2.4.1-suppress-red --intervention suppress:red --ablate red \
        --output_dir outputs/ex2.4.1-suppress-red/eval

Intervention specs (repeatable): suppress:red, suppress:red:a=0.1,b=1.0,p=2.0, repel:red,
repel:red:mapper=linear,a=0.0,b=-0.5, suppress:[1,0,0,0]@bottleneck, axes:0,1, axes:hue; a JSON object works too.
Surgery: --ablate CONCEPT, --prune CONCEPT (or prune:0,1 style specs via --intervention), --heal_steps N adds a healed
copy of every pruned/ablated variant.

Writes OUT/evaluation.json ({"named_color_mse": {"baseline": {...}, "<variant>": {...}}, "named_color_delta",
"scores": {"<variant>": r2}, "score_details", "untouched", ...}), evaluation.md, evaluation.tex, swatches.png,
error_vs_similarity.png and latents.png.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from transformers import AutoModel
from transformers.utils import logging as hf_logging

import structured_hf  # noqa: F401  (registers the Auto classes)
from structured_hf.errors import CheckpointError, StructuredConfigError
from structured_hf.evaluation import evaluate_model
from structured_hf.interventions import SurgerySpec, parse_spec

logger = logging.getLogger("evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="a saved model folder (config.json + model.safetensors) or a Hub id, loaded with "
                        "AutoModel.from_pretrained")
    p.add_argument("--intervention", action="append", default=[], metavar="SPEC",
                   help="an inference-time intervention (or surgery) spec, e.g. suppress:red; repeatable, each is "
                        "evaluated as its own variant")
    p.add_argument("--ablate", action="append", default=[], metavar="CONCEPT",
                   help="zero the axes of CONCEPT in the weights (same width); repeatable")
    p.add_argument("--prune", action="append", default=[], metavar="CONCEPT",
                   help="remove the axes of CONCEPT from the weights (narrower model); repeatable")
    p.add_argument("--heal_steps", type=int, default=0,
                   help="also evaluate a healed copy of each ablated/pruned variant, fine-tuned this many steps on "
                        "retain colors (0: no healing)")
    p.add_argument("--anchor", default=None,
                   help="anchor color (a named color) for similarity scores; default: each concept's first prototype")
    p.add_argument("--grid_size", type=int, default=10, help="RGB grid size for the r² scores (grid_size³ colors)")
    p.add_argument("--output_dir", required=True, help="folder for evaluation.json, tables and figures")
    p.add_argument("--no_figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--save_variants", action="store_true",
                   help="also save every surgery variant as a loadable model under OUT/models/<variant>")
    return p.parse_args(argv)


def variant_specs(args: argparse.Namespace) -> list:
    specs = [parse_spec(s) for s in args.intervention]
    specs += [SurgerySpec("ablate", concept=c) for c in args.ablate]
    specs += [SurgerySpec("prune", concept=c) for c in args.prune]
    if args.heal_steps:
        specs += [SurgerySpec(s.kind, concept=s.concept, axes=s.axes, site=s.site, heal_steps=args.heal_steps)
                  for s in list(specs) if isinstance(s, SurgerySpec) and not s.heal_steps]
    return specs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hf_logging.set_verbosity_error()
    try:
        if args.grid_size < 2:
            raise StructuredConfigError("--grid_size", f"expected an integer >= 2, got {args.grid_size}")
        if args.heal_steps < 0:
            raise StructuredConfigError("--heal_steps", f"expected a non-negative integer, got {args.heal_steps}")
        specs = variant_specs(args)
        local = Path(args.model).expanduser()
        if not local.exists() and (args.model.startswith(("/", ".", "~")) or os.sep + os.sep in args.model):
            raise CheckpointError(args.model, "no such model folder (a Hub id looks like 'namespace/name')")
        model = AutoModel.from_pretrained(str(local) if local.exists() else args.model)
        result = evaluate_model(model, specs, args.output_dir, grid_size=args.grid_size, anchor=args.anchor,
                                figures=not args.no_figures, title=f"Evaluation of {args.model}",
                                save_variants=args.save_variants)
    except (StructuredConfigError, CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, score in result["scores"].items():
        logger.info("%-28s r² = %.4f", name, score)
    return 0


if __name__ == "__main__":
    sys.exit(main())
