#!/usr/bin/env python
"""Evaluate a trained color model and its interventions: per-color MSE tables, r² scores, figures.

    python scripts/evaluate.py --model outputs/ex2.4.1-suppress-red --intervention suppress:red --ablate red \
        --output_dir outputs/ex2.4.1-suppress-red/eval

Intervention specs (repeatable): suppress:red, suppress:red:a=0.1,b=1.0,p=2.0, repel:red,
repel:red:mapper=linear,a=0.0,b=-0.5, suppress:[1,0,0,0]@bottleneck, axes:0,1, axes:hue; a JSON object works too.
Surgery: --ablate CONCEPT, --prune CONCEPT (or prune:0,1 style specs via --intervention), --heal_steps N adds a healed
copy of every pruned/ablated variant.

A StructuredGPT folder (or Hub id) is evaluated by surprisal instead: forget/retain losses on its held-out chunks
(the run's heldout/ folder, or --heldout DIR) for the baseline, suppress/zero/ablate of every anchored concept and each
--intervention spec, written to OUT/language_evaluation.json and .md (with --output_dir equal to the model folder,
its model card is re-rendered with the new table).

Color models: writes OUT/evaluation.json ({"named_color_mse": {"baseline": {...}, "<variant>": {...}}, "named_color_delta",
"scores": {"<variant>": r2}, "score_details", "untouched", ...}), evaluation.md, evaluation.tex, swatches.png,
error_vs_similarity.png and latents.png.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from transformers import AutoConfig
from transformers.utils import logging as hf_logging

from structured_hf.checkpoints import check_checkpoint
from structured_hf.data.colors import resolve_colors
from structured_hf.errors import CheckpointError, StructuredConfigError
from structured_hf.families import variant_specs
from structured_hf.registry import FAMILIES, Family, family_for_model_type

logger = logging.getLogger("evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        required=True,
        help="a saved model folder (config.json + model.safetensors) or a Hub id, loaded with "
        "AutoModel.from_pretrained",
    )
    p.add_argument(
        "--intervention",
        action="append",
        default=[],
        metavar="SPEC",
        help="an inference-time intervention (or surgery) spec, e.g. suppress:red; repeatable, each is "
        "evaluated as its own variant",
    )
    p.add_argument(
        "--ablate",
        action="append",
        default=[],
        metavar="CONCEPT",
        help="zero the axes of CONCEPT in the weights (same width); repeatable",
    )
    p.add_argument(
        "--prune",
        action="append",
        default=[],
        metavar="CONCEPT",
        help="remove the axes of CONCEPT from the weights (narrower model); repeatable",
    )
    p.add_argument(
        "--heal_steps",
        type=int,
        default=0,
        help="also evaluate a healed copy of each ablated/pruned variant, fine-tuned this many steps on "
        "retain colors (0: no healing)",
    )
    p.add_argument(
        "--anchor",
        default=None,
        help="anchor color (a named color) for similarity scores; default: each concept's first prototype",
    )
    p.add_argument("--grid_size", type=int, default=10, help="RGB grid size for the r² scores (grid_size³ colors)")
    p.add_argument("--output_dir", required=True, help="folder for evaluation.json, tables and figures")
    p.add_argument("--no_figures", action="store_true", help="skip the PNG figures")
    p.add_argument(
        "--heldout",
        default=None,
        help="StructuredGPT only: a saved datasets folder of labelled test chunks (default: MODEL/heldout)",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="StructuredGPT only: a prompt for greedy sample generations before/after each variant",
    )
    p.add_argument(
        "--save_variants",
        action="store_true",
        help="also save every surgery variant as a loadable model under OUT/models/<variant>",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hf_logging.set_verbosity_error()
    try:
        if args.grid_size < 2:
            raise StructuredConfigError("--grid_size", f"expected an integer >= 2, got {args.grid_size}")
        if args.heal_steps < 0:
            raise StructuredConfigError("--heal_steps", f"expected a non-negative integer, got {args.heal_steps}")
        variant_specs(args)  # malformed specs fail before any model is read
        if args.anchor is not None:
            resolve_colors([args.anchor], "--anchor")  # an unknown color fails even when no variant would use it
        model_path = resolve_model_path(args.model)
        kind = _model_type(model_path)
        family = family_for_model_type(kind)
        if family is None or family.evaluate is None:
            known = sorted(t for f in FAMILIES.values() if f.evaluate is not None for t in f.model_types)
            raise StructuredConfigError(
                "--model",
                f"{args.model} is a '{kind}' model; scripts/evaluate.py evaluates "
                f"{known} and the architectures of structured_hf.layouts",
            )
        _refuse_output_in_model_folder(args.output_dir, model_path, family)
        return family.evaluate(model_path, args)
    except (StructuredConfigError, CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def resolve_model_path(model: str) -> str:
    """A local folder (checked with :func:`structured_hf.check_checkpoint`: truncated, corrupted or NaN weights fail
    naming the file) or a Hub id. A path that does not exist is refused as a local folder when it can only be one:
    it starts with ``/``, ``.`` or ``~``, has more than one ``/``, or its first part is a folder here (a mistyped
    ``outputs/nothere`` would otherwise be looked up on the Hub, with retries, and fail as a connection error)."""
    local = Path(model).expanduser()
    if local.exists():
        check_checkpoint(local)
        return str(local)
    parts = Path(model).parts
    if model.startswith(("/", ".", "~")) or len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir()):
        near = Path(parts[0]) if parts else Path(".")
        listing = sorted(p.name for p in near.iterdir())[:8] if near.is_dir() and len(parts) == 2 else None
        raise CheckpointError(
            model,
            "no such model folder"
            + (f" ({near} holds {listing})" if listing is not None else "")
            + "; a Hub id looks like 'namespace/name'",
        )
    return model


def _model_type(model: str) -> str | None:
    """The checkpoint's ``model_type`` (reads config.json, locally or from the Hub); a model without a concept map
    (a plain transformers model) is refused with what it lacks."""
    config = AutoConfig.from_pretrained(model)
    kind = getattr(config, "model_type", None)
    if getattr(config, "concepts", None) is None:
        raise StructuredConfigError(
            "--model",
            f"{model} is a plain '{kind}' model without a concept map (config.concepts): there is nothing "
            "to evaluate per concept. Train an anchored model with scripts/train.py, or attach sites and a concept "
            "map to a pretrained model with structured_hf.attach_sites (see docs/pretrained.md)",
        )
    return kind


def _refuse_output_in_model_folder(output_dir: str, model: str, family: Family) -> None:
    """Color evaluations write figures with the training run's names (latents.png, control_ratios.png), which the
    model card shows: evaluating into the model folder would replace them. (A StructuredGPT evaluation into its own
    folder is supported: it re-renders the card with the new table.)"""
    local = Path(model)
    if (
        not family.extras.get("evaluates_into_model_folder")
        and local.is_dir()
        and Path(output_dir).resolve() == local.resolve()
    ):
        raise StructuredConfigError(
            "--output_dir",
            f"is the model folder {model}; the evaluation's figures would "
            "replace the training run's ones that its model card shows. Use a sub-folder, "
            f"e.g. --output_dir {Path(model) / 'eval'}",
        )


if __name__ == "__main__":
    sys.exit(main())
