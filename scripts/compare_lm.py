#!/usr/bin/env python
"""M4 comparison: an anchored StructuredGPT (suppressed, deleted) against the two honest baselines, plus the
relearning attack on every deleted model.

    python scripts/compare_lm.py --anchored outputs/structured_gpt --unanchored outputs/structured_gpt-unanchored \
        --filtered outputs/structured_gpt-filtered --concept violence --output_dir outputs/m4-comparison

The three folders come from ``scripts/train.py configs/structured_gpt/default.yaml`` with, for the baselines,
``--set 'regularizers=[]' --set 'routes=[]'`` and additionally ``--set 'data.filter={concepts: [violence, deception]}'`` (see the
README). Every folder (or Hub id) holds a model and its tokenizer; the held-out test chunks are the anchored run's
``heldout/`` folder and the training chunks are re-labelled from its ``recipe.yaml`` (deterministic).

Writes ``comparison.json`` and ``comparison.md`` into --output_dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import datasets
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers import logging as hf_logging

from structured_hf.data.lm_data import LMDataSpec, labelled_chunks
from structured_hf.errors import StructuredConfigError
from structured_hf.evaluation.language import compare_language_models, comparison_markdown
from structured_hf.hub import pull
from structured_hf.training.recipe import load_recipe

logger = logging.getLogger("compare_lm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--anchored",
        required=True,
        help="folder or Hub id of the anchored run (model, tokenizer, recipe.yaml, heldout/)",
    )
    p.add_argument(
        "--unanchored",
        help="folder or Hub id of the same recipe trained without regularizers "
        "(baseline a: the concept direction is found after training and projected out)",
    )
    p.add_argument("--filtered", help="folder or Hub id of the recipe trained on filtered data (baseline b)")
    p.add_argument("--concept", default="violence", help="the concept to suppress and delete (default: %(default)s)")
    p.add_argument("--output_dir", required=True, help="where comparison.json and comparison.md go")
    p.add_argument(
        "--attack_chunks",
        type=int,
        default=64,
        help="training forget chunks the relearning attack fine-tunes on (default: %(default)s)",
    )
    p.add_argument("--attack_steps", type=int, default=100, help="AdamW steps of the attack (default: %(default)s)")
    p.add_argument("--attack_lr", type=float, default=1.0e-4, help="learning rate of the attack (default: %(default)s)")
    p.add_argument(
        "--eval_every",
        type=int,
        default=10,
        help="evaluate the held-out sets every N attack steps (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the attack's chunk choice and batches")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    hf_logging.set_verbosity_warning()
    try:
        anchored_dir = pull(args.anchored)
        tokenizer = AutoTokenizer.from_pretrained(anchored_dir)
        anchored = AutoModelForCausalLM.from_pretrained(anchored_dir)
        others = {}
        for name in ("unanchored", "filtered"):
            path = getattr(args, name)
            if path is None:
                continue
            folder = pull(path)
            other_tok = AutoTokenizer.from_pretrained(folder)
            if other_tok.get_vocab() != tokenizer.get_vocab():
                raise StructuredConfigError(
                    f"--{name}",
                    "its tokenizer differs from the anchored run's: per-token "
                    "losses would not compare; train it from the same recipe",
                )
            others[name] = AutoModelForCausalLM.from_pretrained(folder)
        if not (anchored_dir / "heldout").is_dir():
            raise StructuredConfigError(
                "--anchored",
                f"{anchored_dir} has no heldout/ test chunks (written by scripts/train.py for structured_gpt recipes)",
            )
        test = datasets.load_from_disk(str(anchored_dir / "heldout"))
        recipe = load_recipe(anchored_dir / "recipe.yaml")
        train = labelled_chunks(LMDataSpec.from_dict(recipe.data))["train"]
        result = compare_language_models(
            anchored,
            tokenizer,
            test,
            train,
            args.concept,
            others.get("unanchored"),
            others.get("filtered"),
            attack_chunks=args.attack_chunks,
            attack_steps=args.attack_steps,
            attack_lr=args.attack_lr,
            eval_every=args.eval_every,
            seed=args.seed,
        )
    except StructuredConfigError as e:
        logger.error("%s", e)
        return 2
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result["models"] = {"anchored": args.anchored, "unanchored": args.unanchored, "filtered": args.filtered}
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    (out / "comparison.md").write_text(comparison_markdown(result))
    logger.info("wrote %s\n%s", out, comparison_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
