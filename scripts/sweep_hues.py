#!/usr/bin/env python
"""Per-hue seed sweeps of a recipe parameterised by concept_color: the same recipe with each named hue as the
concept, every seed of every hue trained as one batched model per hue, and one table row per hue.

    python scripts/sweep_hues.py configs/color_autoencoder/delete-concept-color.yaml --mode delete \
        --design_seeds 0-19 --heldout_seeds 1000-1019 --output_dir outputs/hues-delete
    python scripts/sweep_hues.py configs/color_autoencoder/suppress-concept-color.yaml --mode suppress \
        --design_seeds 0-19 --heldout_seeds 1000-1019 --output_dir outputs/hues-suppress

Per hue and seed set: r² (MSE vs sim³ after pruning the concept for ``delete``, vs sim² under suppression for
``suppress``) min / mean / max, and on how many seeds the named-color targets hold:
- ``recon``: the worst named-color MSE before any intervention is <= 2e-3;
- ``delete``: the concept's own color has MSE >= 0.30 after pruning, every named color whose hue is >= 90° away
  (and every gray) <= 0.005;
- ``suppress``: every named color on the far side of the concept (x·v <= 0) reconstructs bit-identically;
- ``allow`` ("suppress X but allow its neighbours", with e.g. ``--intervention width=35,b=2,p=0.5``): X's own color
  has MSE >= 0.25, every fully saturated color within 15° of X's hue (every 2.5°) >= 0.10, every named hue >= 30°
  away <= 0.005 (the r² column is the suppression's r² vs sim²).
Design seeds and held-out seeds are reported separately. Writes OUT/hues.json and OUT/hues.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from structured_hf.data.colors import GRAY_NAMES, HUE_NAMES, NAMED_COLORS, hue_color, hue_of
from structured_hf.errors import StructuredConfigError
from structured_hf.evaluation import build_variants, evaluate_variants
from structured_hf.evaluation.sweep import parse_seeds
from structured_hf.evaluation.tables import json_ready
from structured_hf.interventions import intervene
from structured_hf.training import load_recipe
from structured_hf.training.batched import train_batched
from structured_hf.training.recipe import parse_set_overrides

logger = logging.getLogger("sweep_hues")
RECON_MAX = 2e-3
DELETED_MIN = 0.30
FAR_MAX = 0.005
FAR_DEG = 90.0
ALLOW_CONCEPT_MIN = 0.25
ALLOW_NEAR_MIN = 0.10
ALLOW_NEAR_DEG = 15.0
ALLOW_FAR_DEG = 30.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="recipe YAML with concept_color")
    p.add_argument(
        "--mode",
        choices=("delete", "suppress", "allow"),
        required=True,
        help="delete: prune the concept, r² vs sim³; suppress: suppress:<hue>, r² vs sim²; allow: "
        "suppress:<hue> with --intervention options, checked on the hues near and far from X",
    )
    p.add_argument(
        "--intervention",
        default=None,
        help="suppression spec options appended to suppress:<hue>, e.g. 'a=0.0,b=1.4,p=0.0'",
    )
    p.add_argument("--hues", default=",".join(HUE_NAMES), help="comma-separated named hues (default: all 12)")
    p.add_argument("--design_seeds", default="0-19", help="seeds the recipe was designed on")
    p.add_argument(
        "--heldout_seeds",
        default="1000-1019",
        help="seeds nobody designed on; 'none' trains the design seeds only (while tuning a recipe)",
    )
    p.add_argument("--grid_size", type=int, default=10, help="RGB grid size for the r² scores")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe field by dotted key (repeatable)",
    )
    p.add_argument("--output_dir", required=True, help="folder for hues.json and hues.md")
    return p.parse_args(argv)


def _hue_distance(a: str, b: str) -> float:
    d = abs(hue_of(NAMED_COLORS[a]) - hue_of(NAMED_COLORS[b])) % 360.0
    return min(d, 360.0 - d)


def seed_result(model, hue: str, mode: str, options: str | None, grid_size: int) -> dict:
    """Scores and target checks of one trained seed."""
    spec = f"prune:{hue}" if mode == "delete" else f"suppress:{hue}" + (f":{options}" if options else "")
    if mode == "allow" and not options:
        raise StructuredConfigError(
            "--intervention", "mode allow needs the suppression's options, e.g. width=35,b=2,p=0.5"
        )
    result = evaluate_variants(build_variants(model, [spec]), grid_size=grid_size)
    name = next(iter(result["scores"]))
    base = result["named_color_mse"]["baseline"]
    after = result["named_color_mse"][name]
    row = {"r2": result["scores"][name], "recon_max": max(base.values()), "concept_mse": after[hue]}
    if mode == "delete":
        far = [n for n in HUE_NAMES if _hue_distance(n, hue) >= FAR_DEG] + list(GRAY_NAMES)
        row["far_max"] = max(after[n] for n in far)
        row["targets_ok"] = row["concept_mse"] >= DELETED_MIN and row["far_max"] <= FAR_MAX
    elif mode == "allow":
        offsets = [d for d in np.arange(-ALLOW_NEAR_DEG, ALLOW_NEAR_DEG + 1e-9, 2.5) if d != 0]
        near = _hue_mse(model, [hue_of(NAMED_COLORS[hue]) + d for d in offsets], spec)
        far = [n for n in HUE_NAMES if _hue_distance(n, hue) >= ALLOW_FAR_DEG - 1e-6]
        row["near_min"] = float(near.min())
        row["far_max"] = max(after[n] for n in far)
        row["far_untouched"] = all(after[n] == base[n] for n in far)
        row["targets_ok"] = (
            row["concept_mse"] >= ALLOW_CONCEPT_MIN and row["near_min"] >= ALLOW_NEAR_MIN and row["far_max"] <= FAR_MAX
        )
    else:
        row["targets_ok"] = bool(result["untouched"][name]["bit_identical"])
    row["recon_ok"] = row["recon_max"] <= RECON_MAX
    return row


def _hue_mse(model, hues: list[float], spec: str) -> np.ndarray:
    """MSE of the fully saturated colors at ``hues`` (degrees) under the intervention ``spec``."""
    colors = torch.tensor(np.asarray([hue_color(h) for h in hues]), dtype=torch.float32)
    with torch.no_grad(), intervene(model, spec):
        out = model(colors=colors).reconstruction
    return ((out - colors) ** 2).mean(-1).numpy()


def summarize(rows: list[dict]) -> dict:
    r2 = np.asarray([r["r2"] for r in rows], dtype=np.float64)
    return {
        "n": len(rows),
        "r2_min": float(np.nanmin(r2)),
        "r2_mean": float(np.nanmean(r2)),
        "r2_max": float(np.nanmax(r2)),
        "targets_ok": sum(r["targets_ok"] for r in rows),
        "recon_ok": sum(r["recon_ok"] for r in rows),
        "concept_mse_min": float(min(r["concept_mse"] for r in rows)),
        **(
            {
                "near_min": float(min(r["near_min"] for r in rows)),
                "far_max": float(max(r["far_max"] for r in rows)),
                "far_untouched": sum(r["far_untouched"] for r in rows),
            }
            if "near_min" in rows[0]
            else {}
        ),
    }


def markdown(table: dict, mode: str) -> str:
    target = {
        "delete": "concept >= 0.30 and hues >= 90° away <= 0.005 after pruning",
        "suppress": "far side bit-identical",
        "allow": "X >= 0.25, within 15° >= 0.10, named hues >= 30° away <= 0.005",
    }[mode]
    lines = []
    for seed_set in table["seeds"]:
        lines += [
            f"### {seed_set} seeds {table['seeds'][seed_set]}",
            "",
            f"| hue | r² min | mean | max | {target} | worst named MSE <= 2e-3 | concept MSE min |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for hue, sets in table["hues"].items():
            s = sets[seed_set]["summary"]
            extra = (
                f" near min {s['near_min']:.3f}, far max {s['far_max']:.4f}, far untouched "
                f"{s['far_untouched']}/{s['n']}"
                if "near_min" in s
                else ""
            )
            lines.append(
                f"| {hue} | {s['r2_min']:.3f} | {s['r2_mean']:.3f} | {s['r2_max']:.3f} | "
                f"{s['targets_ok']}/{s['n']} | {s['recon_ok']}/{s['n']} | {s['concept_mse_min']:.3f}{extra} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hf_logging.set_verbosity_error()
    try:
        seeds = {"design": parse_seeds(args.design_seeds)}
        if args.heldout_seeds.strip().lower() != "none":
            seeds["heldout"] = parse_seeds(args.heldout_seeds)
        if set(seeds["design"]) & set(seeds.get("heldout", [])):
            raise StructuredConfigError("--heldout_seeds", "held-out seeds must differ from the design seeds")
        hues = [h.strip() for h in args.hues.split(",") if h.strip()]
        for h in hues:
            if h not in HUE_NAMES:
                raise StructuredConfigError("--hues", f"unknown hue {h!r}; known: {list(HUE_NAMES)}")
        overrides = parse_set_overrides(args.set)
        everything = [s for listed in seeds.values() for s in listed]
        # Parse every hue's recipes before anything trains: a bad override fails now.
        recipes = {
            h: [load_recipe(args.config, {**overrides, "concept_color": h, "seed": s}) for s in everything]
            for h in hues
        }
    except StructuredConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table: dict = {
        "config": args.config,
        "mode": args.mode,
        "intervention": args.intervention,
        "grid_size": args.grid_size,
        "seeds": seeds,
        "hues": {},
    }
    for hue in hues:
        start = time.perf_counter()
        models, info = train_batched(recipes[hue])
        rows = {
            s: seed_result(m, hue, args.mode, args.intervention, args.grid_size) for s, m in zip(everything, models)
        }
        table["hues"][hue] = {
            k: {"runs": {s: rows[s] for s in v}, "summary": summarize([rows[s] for s in v])} for k, v in seeds.items()
        }
        summaries = {k: table["hues"][hue][k]["summary"] for k in seeds}
        logger.info(
            "%s: %d seeds in %.0f s (training %.0f s); %s",
            hue,
            len(models),
            time.perf_counter() - start,
            info["train_runtime_s"],
            "; ".join(
                f"{k} r2 {v['r2_min']:.3f}/{v['r2_mean']:.3f}/{v['r2_max']:.3f} targets {v['targets_ok']} "
                f"recon {v['recon_ok']}"
                for k, v in summaries.items()
            ),
        )
        (out / "hues.json").write_text(json.dumps(json_ready(table), indent=1))
        (out / "hues.md").write_text(markdown(table, args.mode))
    print(markdown(table, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
