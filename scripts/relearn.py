#!/usr/bin/env python
"""Relearning attack: train an anchored recipe and two baselines with the same budget, delete the concept, and
fine-tune each on concept samples to see whether (and how fast) it comes back.

    python scripts/relearn.py configs/color_autoencoder/ex2.9.1-delete-red-k5.yaml --concept red \
        --steps 200 --heal_steps 200 --output_dir outputs/relearn-ex2.9.1

Models attacked: anchored+pruned (+healed with --heal_steps), unanchored+projected (the recipe without concept
regularizers; the concept's mean-difference direction projected out of the weights), filtered (the unanchored recipe
trained without colors similar to the concept), and the anchored model before deletion (reference).
Writes OUT/relearning.json, OUT/relearning.md and OUT/recovery_curves.png.

For a color-transformer recipe (M3) the same command attacks the anchored model with red deleted from the residual
stream (ablate) and the post-hoc baseline (the recipe without concept regularizers, the mean-difference direction at
red's site projected out of every residual writer), fine-tuning on --num_samples red-involving training examples
and probing red-involving vs far-from-red test examples:

    python scripts/relearn.py configs/color_transformer/default.yaml --anchored_model outputs/color_transformer \
        --steps 200 --output_dir outputs/relearn-color-transformer
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from transformers import AutoModel
from transformers.utils import logging as hf_logging

import structured_hf  # noqa: F401  (registers the Auto classes)
from structured_hf.errors import CheckpointError, StructuredConfigError
from structured_hf.evaluation.relearning import (
    AttackConfig,
    relearning_study,
    relearning_table,
    transformer_relearning_study,
    transformer_relearning_table,
)
from structured_hf.evaluation.tables import json_ready
from structured_hf.training import load_recipe
from structured_hf.training.recipe import family_of

logger = logging.getLogger("relearn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the anchored recipe YAML (its concept map names the concept)")
    p.add_argument("--concept", default="red", help="direction concept to delete and attack (default: red)")
    p.add_argument("--label", default=None, help="weak label for the post-hoc direction (default: the concept name)")
    p.add_argument(
        "--anchored_model",
        default=None,
        help="reuse an already trained anchored model folder instead of training the recipe",
    )
    p.add_argument("--seed", type=int, default=None, help="override the recipe's seed (all three models)")
    p.add_argument("--steps", type=int, default=200, help="attack steps (Adam)")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="attack learning rate (default 1e-2; for a color transformer its recipe's learning rate)",
    )
    p.add_argument("--num_samples", type=int, default=64, help="concept samples the attacker trains on")
    p.add_argument(
        "--min_similarity",
        type=float,
        default=0.5,
        help="HSV similarity to the concept's prototype that makes a color a concept sample (and that "
        "the filtered baseline removes from its training data)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="prototype MSE below which the concept counts as recovered (default 1e-2; for a color "
        "transformer, red-involving test MSE, default 5e-3)",
    )
    p.add_argument(
        "--unanchored_model",
        default=None,
        help="color transformer only: reuse a trained post-hoc baseline (the recipe without concept regularizers)",
    )
    p.add_argument("--heal_steps", type=int, default=0, help="also attack a healed copy (0: no healing)")
    p.add_argument("--output_dir", required=True, help="folder for relearning.json, relearning.md and the figure")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hf_logging.set_verbosity_error()
    out = Path(args.output_dir)
    try:
        overrides = {"output_dir": str(out / "train"), "training.disable_tqdm": True}
        if args.seed is not None:
            overrides["seed"] = args.seed
        recipe = load_recipe(args.config, overrides)
        # The color-operation task has its own attack and study (per-operation errors); the family says so.
        transformer = family_of(recipe).extras.get("relearning_task") == "color_operations"
        lr = (
            args.lr
            if args.lr is not None
            else (float(recipe.training.get("learning_rate", 1.0e-3)) if transformer else 1.0e-2)
        )
        threshold = args.threshold if args.threshold is not None else (5.0e-3 if transformer else 1.0e-2)
        attack = AttackConfig(
            steps=args.steps,
            lr=lr,
            num_samples=args.num_samples,
            min_similarity=args.min_similarity,
            threshold=threshold,
            seed=recipe.seed,
        )
        models = {}
        if args.anchored_model:
            models["anchored"] = AutoModel.from_pretrained(args.anchored_model).eval()
        if args.unanchored_model:
            models["unanchored"] = AutoModel.from_pretrained(args.unanchored_model).eval()
        if transformer:
            if (
                "unanchored" not in models
            ):  # train the post-hoc baseline once and keep it (--unanchored_model OUT/unanchored)
                from structured_hf.evaluation.relearning import train_recipe, unanchored_recipe

                models["unanchored"], _ = train_recipe(unanchored_recipe(recipe))
                models["unanchored"].save_pretrained(out / "unanchored")
            study = transformer_relearning_study(recipe, args.concept, args.label, attack, models=models)
        else:
            study = relearning_study(
                recipe, args.concept, args.label, attack, heal_steps=args.heal_steps, models=models
            )
    except (StructuredConfigError, CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "relearning.json").write_text(json.dumps(json_ready(study), indent=1))
    table = transformer_relearning_table(study) if transformer else relearning_table(study)
    (out / "relearning.md").write_text(table)
    from structured_hf.visualization import plot_recovery_curves

    plot_recovery_curves(study, out / "recovery_curves.png", title=Path(args.config).stem)
    logger.info("\n%s", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
