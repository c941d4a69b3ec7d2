"""Sweeps: many runs of one recipe (variants, regularizer subsets, seeds) from one command, and one summary table.

A recipe becomes a sweep with a top-level ``sweep:`` key::

    sweep:
      seeds: [0, 1, 2]                  # default: the recipe's own seed
      regularizer_subsets: true         # every non-empty subset of the regularizers (2^n - 1 runs); or a list of
                                        # regularizer names to subset (the others are always kept)
      variants:                         # default: the recipe as written
        - {name: strong-planar, set: {regularizers.planar.weight: 1.0, training.max_steps: 3001}}
      figures: false                    # draw each run's PNGs/GIF (default false: sweeps are about the table)

Runs are the product variants x subsets x seeds, each written to ``<output_dir>/<run name>``. A ``set`` key is a
dotted path into the recipe; inside a list (``regularizers``, ``reactive``) a part is either an index or the ``name``
of an entry (``regularizers.planar.weight``). Every run's recipe is parsed when the sweep is, so a bad key fails before
anything trains, with an error naming the sweep field.

``scripts/train.py`` trains a sweep file's base recipe (the sweep key is ignored); ``scripts/sweep.py`` runs them all.
Color-autoencoder runs that differ only in seed and regularizer weights train together as one batched model
(:mod:`structured_hf.training.batched`, :func:`run_sweep_batched`); ``--sequential`` trains them one by one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..concepts import ConceptMap
from ..data.color_datasets import colors_from_spec
from ..data.colors import HUE_NAMES
from ..data.curriculum import Curriculum
from ..evaluation import evaluate_color_model
from ..evaluation.structure import color_structure, loss_excursions, loss_spikes
from ..evaluation.tables import json_ready
from ..run_folder import end_run, prepare_output_dir, start_run
from ..errors import StructuredConfigError
from ..experiment import run_experiment
from ..visualization import plot_run_comparison
from .batched import check_batchable, train_batched
from .recipe import Recipe, parse_recipe
from .sweep_spec import (  # noqa: F401  (parse_sweep, set_path, ...: public here too)
    SweepSpec,
    SweepVariant,
    _expand_raw,
    parse_sweep,
    regularizer_name,
    regularizer_subsets,
    set_path,
)

logger = logging.getLogger(__name__)


# What a run must show to keep each M1 property (docs/m1-experiments.md, 1.8); the summary's `lost` column.
# Thresholds: the foundation thresholds (leak 0.05, red cosine 0.98, named-color MSE 2e-3) and, for the norm, a mean
# deviation of 0.1 over the training colors (a unitarity-trained run sits at ~0.02; without it ~0.8).
MIN_HUE_GAP_DEG = 5.0
PROPERTY_CHECKS: dict[str, str] = {
    "wheel": "the 12 named hues go round the hue plane in cyclic order, no two closer than 5° (no folding, no "
    "bunching; evenly spaced they are 30° apart)",
    "norm": "mean |‖z‖ − 1| over the training colors <= 0.1 (no collapse)",
    "plane": "worst hue's share of squared norm outside the hue plane <= 0.05",
    "anchor": "cosine of each anchored concept's prototype with its direction >= 0.98",
    "recon": "max named-color MSE <= 2.0e-3",
}


@dataclass
class SweepRun:
    """One run of a sweep: its name, the full recipe it trains, and where it came from."""

    name: str
    recipe: Recipe
    variant: str
    regularizers: tuple[str, ...]
    seed: int


def expand_sweep(recipe: Recipe, label: str | None = None) -> list[SweepRun]:
    """The runs of a recipe's sweep (one run, the recipe itself without its sweep key, when it has none).

    ``label`` prefixes the run names (``label/run``; a sweep-less recipe's run is then just ``label``), to tell the
    runs of several recipes apart in one summary.
    """
    raw = recipe.to_dict()
    spec = parse_sweep(raw.pop("sweep", None), raw, parse_run=parse_recipe)
    if spec is None:
        base = parse_recipe(raw)
        return [
            SweepRun(
                name=label or Path(recipe.output_dir).name or "run",
                recipe=base,
                variant="base",
                regularizers=tuple(regularizer_name(r) for r in recipe.regularizers),
                seed=recipe.seed,
            )
        ]
    return [
        SweepRun(
            name=f"{label}/{name}" if label else name,
            recipe=parse_recipe(raw_run),
            variant=variant,
            regularizers=kept,
            seed=raw_run.get("seed", 0),
        )
        for name, raw_run, variant, kept in _expand_raw(raw, spec, parse_recipe)
    ]


def sweep_figures(recipe: Recipe) -> bool:
    """Whether the recipe's sweep asks for each run's figures."""
    return bool((recipe.sweep or {}).get("figures", False))


# ---- running and summarizing ---------------------------------------------------------------------------------------
def summary_row(run: SweepRun, metrics: Mapping[str, Any], wall_s: float) -> dict[str, Any]:
    """The key numbers of one run (flat, JSON-ready) and the M1 properties it lost (see :data:`PROPERTY_CHECKS`)."""
    structure = metrics.get("structure", {})
    data = structure.get("data", {})
    stability = metrics.get("stability", {})
    spikes = stability.get("loss_spikes", {})
    anchors = {name: c["cosine"] for name, c in (metrics.get("concepts") or {}).items() if "cosine" in c}
    row = {
        "run": run.name,
        "variant": run.variant,
        "regularizers": list(run.regularizers),
        "seed": run.seed,
        "wall_s": wall_s,
        "train_runtime_s": metrics.get("train_runtime_s"),
        "named_color_mse_max": metrics.get("named_color_mse_max"),
        "hue_mse_max": metrics.get("hue_mse_max"),
        "hue_order_ok": structure.get("hue_order", {}).get("ok"),
        "hue_min_gap_deg": structure.get("hue_order", {}).get("min_gap_deg"),
        "hue_plane_leak_max": structure.get("hue_plane_leak_max"),
        "unit_norm_deviation_max": structure.get("unit_norm_deviation_max"),
        "data_unit_norm_deviation_max": data.get("unit_norm_deviation_max"),
        "data_unit_norm_deviation_mean": data.get("unit_norm_deviation_mean"),
        "data_norm_mean": data.get("norm_mean"),
        "off_plane_r": (data.get("off_plane_spread") or structure.get("off_plane_spread") or {}).get("r"),
        "anchor_cosines": anchors,
        "loss_spike_count": spikes.get("count"),
        "loss_spike_max_height": spikes.get("max_height"),
        "reconstruction_spike_count": stability.get("reconstruction_spikes", {}).get("count"),
        "reconstruction_spike_heights": stability.get("reconstruction_spikes", {}).get("heights"),
        "reconstruction_excursion_count": stability.get("reconstruction_excursions", {}).get("count"),
        "reconstruction_excursion_max": stability.get("reconstruction_excursions", {}).get("max_ratio"),
        "reconstruction_excursion_peaks": stability.get("reconstruction_excursions", {}).get("peaks"),
        "latent_jitter_mean": stability.get("latent_jitter", {}).get("mean"),
    }
    row["lost"] = lost_properties(row)
    return row


def lost_properties(row: Mapping[str, Any]) -> list[str]:
    """Names of :data:`PROPERTY_CHECKS` the run fails (checks that do not apply, e.g. no anchor, are skipped)."""
    lost = []
    gap = row.get("hue_min_gap_deg")
    if row.get("hue_order_ok") is False or (gap is not None and gap < MIN_HUE_GAP_DEG):
        lost.append("wheel")
    norm = row.get("data_unit_norm_deviation_mean")
    if norm is not None and norm > 0.1:
        lost.append("norm")
    leak = row.get("hue_plane_leak_max")
    if leak is not None and leak > 0.05:
        lost.append("plane")
    if any(c < 0.98 for c in (row.get("anchor_cosines") or {}).values()):
        lost.append("anchor")
    mse = row.get("named_color_mse_max")
    if mse is not None and mse > 2.0e-3:
        lost.append("recon")
    return lost


def _fmt(value: Any, kind: str = "g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if kind == "e":
        return f"{value:.2e}"
    if kind == "f3":
        return f"{value:.3f}"
    if kind == "f1":
        return f"{value:.1f}"
    return str(value)


def summary_markdown(rows: Sequence[Mapping[str, Any]], title: str = "Sweep summary") -> str:
    """One table: a row per run with wall time, reconstruction, structure, anchors, stability and lost properties."""
    header = (
        "| run | seed | wall s | max named MSE | max hue MSE | hue order | min gap ° | hue leak | mean norm | "
        "unit dev (mean / max) | off-plane r | anchor cos | loss spikes (n / max) | "
        "recon. spikes at phase starts (n: heights) | recon. excursions anywhere (n: top 3 step→ratio) | "
        "jitter | lost |"
    )
    rule = "|---|" + "---:|" * 4 + ":-:|" + "---:|" * 10 + "---|"
    lines = [f"# {title}", "", header, rule]
    for r in rows:
        anchors = ", ".join(f"{k} {v:.4f}" for k, v in (r.get("anchor_cosines") or {}).items()) or "–"
        unit = (
            f"{_fmt(r.get('data_unit_norm_deviation_mean'), 'f3')} / "
            f"{_fmt(r.get('data_unit_norm_deviation_max'), 'f3')}"
            if r.get("data_unit_norm_deviation_mean") is not None
            else _fmt(r.get("unit_norm_deviation_max"), "f3")
        )
        spikes = (
            f"{r['loss_spike_count']} / {r['loss_spike_max_height']:.2f}"
            if r.get("loss_spike_count") is not None and r.get("loss_spike_max_height") is not None
            else "–"
        )
        heights = r.get("reconstruction_spike_heights")
        recon_spikes = (
            f"{r['reconstruction_spike_count']}: " + " ".join(f"{h:.1f}" for h in heights) if heights else "–"
        )
        peaks = sorted(r.get("reconstruction_excursion_peaks") or [], key=lambda p: -p[1])[:3]
        excursions = (
            f"{r['reconstruction_excursion_count']}: " + ", ".join(f"{s}→{h:.1f}" for s, h in sorted(peaks))
            if r.get("reconstruction_excursion_count")
            else "0"
        )
        lines.append(
            f"| {r['run']} | {r['seed']} | {_fmt(r.get('wall_s'), 'f1')} | {_fmt(r.get('named_color_mse_max'), 'e')} | "
            f"{_fmt(r.get('hue_mse_max'), 'e')} | {_fmt(r.get('hue_order_ok'))} | "
            f"{_fmt(r.get('hue_min_gap_deg'), 'f1')} | "
            f"{_fmt(r.get('hue_plane_leak_max'), 'f3')} | {_fmt(r.get('data_norm_mean'), 'f3')} | {unit} | "
            f"{_fmt(r.get('off_plane_r'), 'f3')} | {anchors} | "
            f"{spikes} | {recon_spikes} | {excursions} | {_fmt(r.get('latent_jitter_mean'), 'f3')} | "
            f"{', '.join(r.get('lost') or []) or '–'} |"
        )
    lost = "; ".join(f"**{k}**: {v}" for k, v in PROPERTY_CHECKS.items())
    lines += [
        "",
        f"`lost` names the properties a run fails: {lost}.",
        (
            "Norms and unit deviation are over the training colors the run drew last (a curriculum's final phase); "
            "off-plane r is the correlation of each such color's share of squared norm outside the hue plane with its "
            "1 − vibrancy."
        ),
        (
            "Spikes: loss peak in the 50 steps after each curriculum phase start over the median of the 50 before "
            "(counted above 1.5), for the total loss and for the reconstruction term alone (heights per phase start, in "
            "order). Excursions: stretches anywhere in the run where the reconstruction loss exceeds 2x the median of the "
            "50 steps before (count, and the three highest as step→ratio). Jitter: mean latent displacement between "
            "consecutive snapshots (30 per run)."
        ),
    ]
    return "\n".join(lines) + "\n"


def write_summary(
    rows: Sequence[Mapping[str, Any]], out_dir: str | Path, title: str = "Sweep summary"
) -> tuple[Path, Path]:
    """``summary.json`` (every row) and ``summary.md`` (the table) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "summary.json", out / "summary.md"
    json_path.write_text(json.dumps({"runs": list(rows), "property_checks": PROPERTY_CHECKS}, indent=2))
    md_path.write_text(summary_markdown(rows, title))
    return json_path, md_path


def run_sweep(
    runs: Sequence[SweepRun],
    runner: Callable[..., Mapping[str, Any]] | None = None,
    figures: bool = False,
    log: Callable[[str], None] = logger.info,
) -> list[dict[str, Any]]:
    """Run each sweep run in turn with ``runner(recipe, figures=..., animation=...)`` (default:
    :func:`structured_hf.experiment.run_experiment`), reporting a line before and after each run through ``log``
    (default: this module's logger; scripts pass ``print``); returns the summary rows."""
    runner = runner or run_experiment
    rows = []
    total_start = time.perf_counter()
    for i, run in enumerate(runs, 1):
        log(f"[{i}/{len(runs)}] {run.name}: training ({run.recipe.training.get('max_steps', '?')} steps) ...")
        start = time.perf_counter()
        metrics = runner(run.recipe, figures=figures, animation=figures)
        wall = time.perf_counter() - start
        row = summary_row(run, metrics, wall)
        rows.append(row)
        log(
            f"[{i}/{len(runs)}] {run.name}: {wall:.1f} s, max named MSE {_fmt(row['named_color_mse_max'], 'e')}, "
            f"hue order {'ok' if row['hue_order_ok'] else 'LOST'}, leak {_fmt(row['hue_plane_leak_max'], 'f3')}"
            + (f", lost: {', '.join(row['lost'])}" if row["lost"] else "")
        )
    log(f"{len(runs)} runs in {time.perf_counter() - total_start:.1f} s")
    return rows


def batch_groups(runs: Sequence[SweepRun]) -> list[list[int]]:
    """Indices of runs that can train as one batch (same model, data, training fields, learning rate and
    regularizers up to their weights), in first-appearance order."""
    groups: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        r = run.recipe
        key = json.dumps(
            [
                r.model,
                r.data,
                {k: v for k, v in r.training.items() if k not in ("disable_tqdm",)},
                r.schedules.get("learning_rate"),
                r.routes,
                r.reactive,
                [{k: v for k, v in spec.items() if k != "weight"} for spec in r.regularizers],
            ],
            sort_keys=True,
            default=str,
        )
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def run_sweep_batched(
    runs: Sequence[SweepRun], log: Callable[[str], None] = logger.info, force: bool = False
) -> list[dict[str, Any]]:
    """Like :func:`run_sweep`, but every group of :func:`batch_groups` trains as one batched model.

    Each run still gets its folder (``config.json`` + weights, ``recipe.yaml``, ``run.json``, ``metrics.json``) and
    summary row; the batched loop keeps no per-step log, so the stability columns are empty and no figures are drawn.
    A group that cannot be batched (another family, a curriculum, ...) trains sequentially, or with ``force`` raises
    the :class:`~structured_hf.errors.StructuredConfigError` that says why.
    """
    rows: list[dict[str, Any] | None] = [None] * len(runs)
    total_start = time.perf_counter()
    for group in batch_groups(runs):
        recipes = [runs[i].recipe for i in group]
        try:
            check_batchable(recipes)
        except StructuredConfigError as e:
            if force:
                raise
            log(f"{len(group)} run(s) train one by one: {e}")
            for i, row in zip(group, run_sweep([runs[i] for i in group], log=log)):
                rows[i] = row
            continue
        # Decided before anything trains or is written, as for a single run: a used folder is refused.
        states = {i: prepare_output_dir(runs[i].recipe.output_dir, runs[i].recipe.to_dict()) for i in group}
        log(f"training {len(group)} run(s) as one batch ({recipes[0].training.get('max_steps')} steps) ...")
        models, info = train_batched(recipes)
        wall = info["train_runtime_s"] / len(group)
        for k, (i, model) in enumerate(zip(group, models), 1):
            run = runs[i]
            metrics = _batched_run_metrics(run, states[i], model, wall, info["log_history"][k - 1])
            rows[i] = row = summary_row(run, metrics, wall)
            log(
                f"[{k}/{len(group)}] {run.name}: max named MSE {_fmt(row['named_color_mse_max'], 'e')}, hue order "
                f"{'ok' if row['hue_order_ok'] else 'LOST'}, leak {_fmt(row['hue_plane_leak_max'], 'f3')}"
                + (f", lost: {', '.join(row['lost'])}" if row["lost"] else "")
            )
        log(f"batch of {len(group)}: {info['train_runtime_s']:.1f} s of training")
    log(f"{len(runs)} runs in {time.perf_counter() - total_start:.1f} s")
    return [row for row in rows if row is not None]


def _batched_run_metrics(
    run: SweepRun, state: Any, model: Any, train_runtime: float, history: Sequence[Mapping[str, float]]
) -> dict[str, Any]:
    """Write one batched run's folder and return its metrics (those of a single run, minus the per-step logs)."""
    recipe = run.recipe
    out = Path(recipe.output_dir)
    start_run(out, state, recipe.to_dict(), recipe.to_yaml())
    concepts = ConceptMap.of(model)
    plane = next((tuple(c.axes) for c in concepts if c.axes is not None and len(c.axes) == 2), (0, 1))
    train_colors, _ = colors_from_spec(recipe.data["train"], "data.train")
    metrics = evaluate_color_model(model)
    metrics["hue_mse_max"] = max(metrics["named_color_mse"][name] for name in HUE_NAMES)
    metrics["structure"] = color_structure(model, site="bottleneck", plane=plane, data_colors=train_colors)
    metrics["stability"] = {
        "loss_spikes": loss_spikes(history, []),
        "reconstruction_spikes": loss_spikes(history, [], key="term/reconstruction"),
        "reconstruction_excursions": loss_excursions(history, key="term/reconstruction"),
    }
    metrics.update(train_runtime_s=train_runtime, train_steps=int(recipe.training.get("max_steps", 0)), batched=True)
    model.save_pretrained(out)
    (out / "log_history.json").write_text(json.dumps(list(history), indent=1))
    (out / "metrics.json").write_text(json.dumps(json_ready(metrics), indent=1))
    end_run(out, "finished")
    return metrics


def plot_sweep_losses(runs: Sequence[SweepRun], path: str | Path, key: str = "loss", title: str = "") -> Path | None:
    """Loss curves of the runs on one axis, each with its curriculum phase starts (dotted); from each run's
    ``log_history.json``. For the 1.6 comparison (smooth vs stepped) and other few-run sweeps."""
    histories, boundaries = {}, {}
    for run in runs:
        log_path = Path(run.recipe.output_dir) / "log_history.json"
        if not log_path.is_file():
            continue
        histories[run.name] = json.loads(log_path.read_text())
        curriculum = Curriculum.from_dict(run.recipe.data.get("curriculum"))
        boundaries[run.name] = [start for start, _ in curriculum.boundaries() if start > 0] if curriculum else []
    if not histories:
        return None
    return plot_run_comparison(
        histories,
        path,
        boundaries=boundaries,
        key=key,
        title=title or f"{key} per run (dotted: curriculum phase starts)",
    )


__all__ = [
    "PROPERTY_CHECKS",
    "SweepRun",
    "SweepSpec",
    "SweepVariant",
    "batch_groups",
    "expand_sweep",
    "lost_properties",
    "parse_sweep",
    "plot_sweep_losses",
    "regularizer_subsets",
    "run_sweep",
    "run_sweep_batched",
    "set_path",
    "summary_markdown",
    "summary_row",
    "sweep_figures",
    "write_summary",
]
