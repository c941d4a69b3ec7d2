#!/usr/bin/env python
"""The relearning benchmark: attack every deleted model and its baselines over a grid of fine-tuning attacks and
report how much of the deletion each keeps, relative to document-level data filtering (docs/robustness.md).

One command per family:

    # M2, color autoencoder: trains the anchored recipe, its unregularized twin and the filtered twin per seed
    python scripts/robustness.py configs/color_autoencoder/ex2.11.2-delete-red-deletion-target.yaml --seeds 0-19 \
        --output_dir outputs/robustness-m2

    # M3, color-operation transformer
    python scripts/robustness.py configs/color_transformer/default.yaml --seeds 0-2 --output_dir outputs/robustness-m3

    # M4, StructuredGPT: from trained run folders (scripts/train.py; see compare_lm.py for the baseline commands)
    python scripts/robustness.py --anchored outputs/structured_gpt --reference outputs/structured_gpt-unanchored \
        --filtered outputs/structured_gpt-filtered --output_dir outputs/robustness-m4

The grid: AdamW at --lrs on --sizes forget examples from the training split, --steps steps, plus one attack at
--retain_lr on retain-only data. Writes OUT/robustness.json, OUT/robustness.md and OUT/recovery_curves.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import datasets
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

import structured_hf  # noqa: F401  (registers the Auto classes)
from structured_hf.data.label_calibration import load_calibration_set
from structured_hf.data.lm_data import LMDataSpec, labelled_chunks
from structured_hf.data.text_labelers import LabelingPipeline
from structured_hf.data.text_pipeline import load_label_config
from structured_hf.errors import CheckpointError, StructuredConfigError
from structured_hf.evaluation import robustness as rb
from structured_hf.evaluation.language import context_length
from structured_hf.evaluation.sweep import parse_seeds
from structured_hf.evaluation.tables import json_ready
from structured_hf.hub import pull
from structured_hf.interventions import resolve_axes
from structured_hf.training import load_recipe
from structured_hf.training.recipe import model_type

logger = logging.getLogger("robustness")

# Per-family defaults: what is deleted, how, and how often the held-out probes are cheap enough to run.
DEFAULTS = {
    "color_autoencoder": {"concept": "red", "methods": "anchored+prune,post-hoc", "batch_size": 64, "eval_every": 1},
    "color_transformer": {
        "concept": "red",
        "methods": "anchored+ablate,anchored+two-sided,anchored+ablate (writers frozen),post-hoc",
        "batch_size": 64,
        "eval_every": 5,
    },
    "structured_gpt": {
        "concept": "violence",
        "methods": "anchored+ablate,anchored+two-sided,anchored+ablate (writers frozen),post-hoc",
        "batch_size": 8,
        "eval_every": 10,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="color recipe YAML (M2/M3); omit for M4 and give --anchored")
    p.add_argument("--anchored", help="M4: the anchored run folder (model, tokenizer, recipe.yaml, heldout/)")
    p.add_argument("--reference", help="M4: the unregularized run folder (same recipe without regularizers/routes)")
    p.add_argument("--filtered", help="M4: the document-filtered run folder")
    p.add_argument("--token_filtered", help="M4: a token-level filtered run folder (method 'token-filtering')")
    p.add_argument("--seeds", default="0", help="M2/M3: recipe seeds, e.g. 0-19 or 0,3,7 (default: %(default)s)")
    p.add_argument(
        "--design_seeds",
        default="",
        help="seeds the method was designed on (recorded in the JSON; the others count as held out)",
    )
    p.add_argument("--concept", help="the deleted concept (default: red for colors, violence for M4)")
    p.add_argument(
        "--methods", help="comma-separated deleted models to attack (default per family; see docs/robustness.md)"
    )
    p.add_argument("--lrs", default="3.0e-5,1.0e-4,3.0e-4,1.0e-3", help="AdamW learning rates (default: %(default)s)")
    p.add_argument("--sizes", default="64,256", help="forget attack-set sizes (default: %(default)s)")
    p.add_argument("--steps", type=int, default=100, help="attack steps (default: %(default)s)")
    p.add_argument(
        "--retain_lr",
        type=float,
        default=1.0e-4,
        help="learning rate of the retain-only attack; negative skips it (default: %(default)s)",
    )
    p.add_argument("--batch_size", type=int, help="attack batch size (default per family)")
    p.add_argument("--eval_every", type=int, help="probe every N attack steps (default per family)")
    p.add_argument("--probe_forget", type=int, default=None, help="M4: held-out forget chunks probed (default all)")
    p.add_argument("--probe_retain", type=int, default=256, help="M4: held-out retain chunks probed")
    p.add_argument(
        "--absorption",
        action="store_true",
        help="M4 only: instead of attacking, measure absorption on the hand-labelled calibration passages "
        "(writes OUT/absorption.json)",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--output_dir",
        required=True,
        help="where robustness.json, robustness.md and recovery_curves.png (or absorption.json) go",
    )
    return p.parse_args(argv)


def _floats(text: str, field: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise StructuredConfigError(field, f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str, field: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise StructuredConfigError(field, f"expected comma-separated integers, got {text!r}") from None


def _grid(args: argparse.Namespace, family: str, seed: int) -> list[rb.GridPoint]:
    d = DEFAULTS[family]
    return rb.attack_grid(
        _floats(args.lrs, "--lrs"),
        _ints(args.sizes, "--sizes"),
        steps=args.steps,
        retain_lr=None if args.retain_lr < 0 else args.retain_lr,
        batch_size=args.batch_size or d["batch_size"],
        eval_every=args.eval_every or d["eval_every"],
        seed=seed,
    )


# The color families' methods (the models each trains per seed); M4 runs take trained folders instead.
METHOD_BUILDERS = {"color_autoencoder": rb.color_autoencoder_methods, "color_transformer": rb.color_transformer_methods}


def run_colors(args: argparse.Namespace, out: Path, write: Callable[[rb.BenchmarkResult], None]) -> rb.BenchmarkResult:
    """M2/M3: train every model per seed, then attack them; ``write`` saves the report after every seed (a long
    sweep stopped early keeps the seeds it finished)."""
    base = load_recipe(args.config, {"output_dir": str(out / "train"), "training.disable_tqdm": True})
    family = model_type(base)
    if family not in METHOD_BUILDERS:
        raise StructuredConfigError(
            "config",
            f"expected a recipe of {sorted(METHOD_BUILDERS)}, got "
            f"{family!r} (M4 runs take --anchored/--reference/--filtered folders)",
        )
    d = DEFAULTS[family]
    concept, methods = args.concept or d["concept"], (args.methods or d["methods"]).split(",")
    seeds = parse_seeds(args.seeds)
    grid = _grid(args, family, seeds[0])  # validates the grid before anything trains
    result = None
    for seed in seeds:
        recipe = load_recipe(
            args.config, {"output_dir": str(out / "train"), "training.disable_tqdm": True, "seed": seed}
        )
        models, task, train_s = METHOD_BUILDERS[family](recipe, concept, methods)
        grid = _grid(args, family, seed)
        result = result or rb.BenchmarkResult(family, concept, task.unit, grid)
        run = rb.run_benchmark(models, task, grid, progress=not args.no_progress, desc=f"seed {seed}")
        result.add(seed, run, train_s)
        write(result)
        logger.info(
            "seed %d: worst ratio to filtering %s", seed, {m: s["worst_ratio"] for m, s in run["scores"].items()}
        )
    return result


def run_absorption(args: argparse.Namespace, out: Path) -> dict:
    """M4: residual share on the concept's axes and deletion's loss increase for hand-labelled passages the weak
    labeller caught or missed."""
    anchored_dir = pull(args.anchored)
    tokenizer = AutoTokenizer.from_pretrained(anchored_dir)
    models = {
        name: AutoModelForCausalLM.from_pretrained(pull(getattr(args, name))).eval()
        for name in ("anchored", "reference", "filtered")
        if getattr(args, name)
    }
    concept = args.concept or DEFAULTS["structured_gpt"]["concept"]
    spec = LMDataSpec.from_dict(load_recipe(anchored_dir / "recipe.yaml").data)
    config = load_label_config(spec.labels_config)
    rows = load_calibration_set(concepts=[concept])
    texts = [r["text"] for r in rows]
    pipeline = LabelingPipeline.from_config(config, only=list(spec.labelers) if spec.labelers else None)
    weak = pipeline.label(texts, progress=False)[f"prob_{concept}"]
    report = rb.absorption_report(
        models["anchored"],
        concept,
        tokenizer,
        texts,
        [r[concept] for r in rows],
        weak,
        models.get("reference"),
        models.get("filtered"),
    )
    report["labelers"] = list(spec.labelers or [])
    return report


def run_language(args: argparse.Namespace) -> rb.BenchmarkResult:
    """M4: attack trained run folders."""
    if args.reference is None or args.filtered is None:
        logger.warning(
            "without --reference the undeleted anchored model is the reference, without --filtered there "
            "is no ratio to filtering: a diagnosis, not the benchmark"
        )
    d = DEFAULTS["structured_gpt"]
    concept, methods = args.concept or d["concept"], (args.methods or d["methods"]).split(",")
    if "token-filtering" not in methods and args.token_filtered:
        methods.append("token-filtering")
    seed = _ints(args.seeds, "--seeds")[0]
    grid = _grid(args, "structured_gpt", seed)
    anchored_dir = pull(args.anchored)
    tokenizer = AutoTokenizer.from_pretrained(anchored_dir)
    models = {}
    for name in ("anchored", "reference", "filtered", "token_filtered"):
        path = getattr(args, name)
        if path is None:
            continue
        folder = pull(path)
        if AutoTokenizer.from_pretrained(folder).get_vocab() != tokenizer.get_vocab():
            raise StructuredConfigError(f"--{name}", "its tokenizer differs from the anchored run's")
        models[name] = AutoModelForCausalLM.from_pretrained(folder).eval()
    if not (anchored_dir / "heldout").is_dir():
        raise StructuredConfigError("--anchored", f"{anchored_dir} has no heldout/ test chunks")
    test = datasets.load_from_disk(str(anchored_dir / "heldout"))
    train = labelled_chunks(LMDataSpec.from_dict(load_recipe(anchored_dir / "recipe.yaml").data))["train"]
    methods_built = rb.language_methods(
        models["anchored"],
        models.get("reference"),
        models.get("filtered"),
        tokenizer,
        train,
        concept,
        methods,
        models.get("token_filtered"),
    )
    task = rb.language_task(
        tokenizer,
        train,
        test,
        concept,
        context_length(models["anchored"]),
        args.probe_forget,
        args.probe_retain,
        channel=resolve_axes(models["anchored"], concept),
    )
    result = rb.BenchmarkResult("structured_gpt", concept, task.unit, grid)
    result.add(seed, rb.run_benchmark(methods_built, task, grid, progress=not args.no_progress))
    result.extra["models"] = {k: getattr(args, k) for k in ("anchored", "reference", "filtered", "token_filtered")}
    result.extra["reference_is"] = "unregularized recipe" if args.reference else "anchored model, not deleted"
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    hf_logging.set_verbosity_error()
    out = Path(args.output_dir)
    start = time.perf_counter()
    try:
        design = parse_seeds(args.design_seeds) if args.design_seeds else []
        if (args.config is None) == (args.anchored is None):
            raise StructuredConfigError("config", "give a color recipe YAML (M2/M3) or --anchored (M4), not both")

        def write(result: rb.BenchmarkResult) -> str:
            report = result.to_dict(wall_time_s=time.perf_counter() - start)
            report["design_seeds"] = design
            report["command"] = " ".join(sys.argv)
            out.mkdir(parents=True, exist_ok=True)
            (out / "robustness.json").write_text(json.dumps(json_ready(report), indent=1))
            table = rb.robustness_markdown(report)
            (out / "robustness.md").write_text(table)
            rb.plot_robustness_curves(
                report,
                out / "recovery_curves.png",
                title=f"{report['family']}: '{report['concept']}', seed {report['seeds'][0]}",
            )
            return table

        if args.absorption:
            if not args.anchored:
                raise StructuredConfigError("--absorption", "needs the M4 run folders (--anchored)")
            report = run_absorption(args, out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "absorption.json").write_text(json.dumps(json_ready(report), indent=1))
            logger.info("%s", json.dumps(json_ready(report), indent=1))
            return 0
        result = run_language(args) if args.anchored else run_colors(args, out, write)
    except (StructuredConfigError, CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger.info("\n%s", write(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
