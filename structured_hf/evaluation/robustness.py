"""The relearning benchmark: how much of a deletion survives a fine-tuning attack, compared with data filtering.

The measure follows the unlearning literature (Deeb & Roger 2024; Łucki et al. 2024; Lee et al. 2025): attack every
deleted model and every baseline trained with the same budget, over a grid of attack settings, and record

- the **lowest held-out forget loss** reached during the attack, and the retain loss at that step;
- the **steps until half the deletion is recovered**: the first probed step at which the method's forget loss is at
  most half as far above the attacked reference's (at the same step) as it was before the attack;
- the **kept gap**: ``(lowest forget − reference's lowest forget) − (retain at that step − reference's retain at its
  step)``: what the deletion still keeps out after the attack, minus what it costs in general (a method cannot win
  by breaking the model);
- the **ratio to filtering**: the method's kept gap divided by document filtering's kept gap under the same attack;
  the worst case (minimum) over the grid is the method's score for one seed. A setting where filtering keeps no gap
  (<= ``eps``) has no ratio and is left out of the minimum (reported as ``None``).

The reference is the unregularized recipe (no concept terms, no routing), attacked like everyone else. ``retain_cost``
is a method's retain loss minus the reference's before any attack.

The grid (:func:`attack_grid`): AdamW at several learning rates, on 64 and 256 forget examples from the training
split, plus one attack on retain-only (unrelated) data. Everything else is family-specific and lives in an
:class:`AttackTask` (what an attack set is, the loss of one batch, the two probes): the color autoencoder (M2), the
color-operation transformer (M3) and StructuredGPT (M4) each build one below, so the attack loop, the metrics and the
report are one code path (:func:`~structured_hf.evaluation.relearning.attack_loop`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are written to files
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from ..concepts import ConceptMap, ConceptSpec
from ..data.colors import rgb_grid
from ..data.labels import parse_labelers
from ..errors import StructuredConfigError
from ..interventions.isolation import dedicated_slices, delete_isolated
from ..interventions.surgery import ablate, project_out, prune, resolve_axes
from ..interventions.two_sided import channel_slices, two_sided_cut
from ..sites import capture
from ..training.recipe import build_task_splits, model_config
from ..visualization.style import save_figure
from . import language as lm
from .color_metrics import reconstruct
from .color_tasks import RED_FAR, RED_INVOLVED, example_redness, task_arrays
from .relearning import (
    AttackConfig,
    attack_loop,
    concept_samples,
    mean_difference_direction,
    recipe_concept_anchor,
    residual_mean_difference,
    train_recipe,
    unanchored_recipe,
)
from .similarity import hsv_similarity

logger = logging.getLogger(__name__)

DEFAULT_LRS = (3.0e-5, 1.0e-4, 3.0e-4, 1.0e-3)
DEFAULT_SIZES = (64, 256)
DATA_KINDS = ("forget", "retain")
REFERENCE = "reference"
FILTERING = "filtering"

GradMask = Callable[[nn.Module], Sequence[tuple[torch.Tensor, int, torch.Tensor]]]


# ---- the grid -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridPoint:
    """One attack setting: which data (``forget`` or ``retain``-only) and the budget."""

    data: str
    attack: AttackConfig

    def __post_init__(self) -> None:
        if self.data not in DATA_KINDS:
            raise StructuredConfigError("attack_grid.data", f"expected one of {list(DATA_KINDS)}, got {self.data!r}")

    @property
    def name(self) -> str:
        return f"{self.data} n={self.attack.num_samples} lr={self.attack.lr:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "data": self.data, **asdict(self.attack)}


def attack_grid(
    lrs: Sequence[float] = DEFAULT_LRS,
    sizes: Sequence[int] = DEFAULT_SIZES,
    steps: int = 100,
    retain_lr: float | None = 1.0e-4,
    retain_size: int = 256,
    batch_size: int = 8,
    eval_every: int = 10,
    seed: int = 0,
) -> list[GridPoint]:
    """The attack grid: AdamW at every ``lrs`` x ``sizes`` forget examples, plus (unless ``retain_lr`` is None) one
    attack at ``retain_lr`` on ``retain_size`` retain-only examples. Bad values raise naming the field."""
    lrs, sizes = list(lrs), list(sizes)
    if not lrs:
        raise StructuredConfigError("attack_grid.lrs", "the attack grid needs at least one learning rate")
    if not sizes:
        raise StructuredConfigError("attack_grid.sizes", "the attack grid needs at least one attack-set size")
    points = [
        GridPoint(
            "forget",
            AttackConfig(
                steps=steps,
                lr=lr,
                batch_size=batch_size,
                num_samples=n,
                seed=seed,
                optimizer="adamw",
                eval_every=eval_every,
            ),
        )
        for n in sizes
        for lr in lrs
    ]
    if retain_lr is not None:
        points.append(
            GridPoint(
                "retain",
                AttackConfig(
                    steps=steps,
                    lr=retain_lr,
                    batch_size=batch_size,
                    num_samples=retain_size,
                    seed=seed,
                    optimizer="adamw",
                    eval_every=eval_every,
                ),
            )
        )
    return points


# ---- what a family provides ---------------------------------------------------------------------------------------
@dataclass
class AttackTask:
    """What an attack means for one model family.

    Args:
        family: a name for reports.
        unit: the probes' unit (``"MSE"`` or ``"nats/token"``).
        sample: ``(data kind, n, seed) -> attack set`` (``forget``: concept examples from the training split;
            ``retain``: unrelated ones).
        batch_loss: ``(attack set, batch size) -> step_loss(model, generator) -> loss``.
        probes: ``{"forget": probe, "retain": probe}``, ``probe(model) -> held-out error``.
        extra_probes: more curves recorded during every attack (diagnostics, e.g. how much the deleted channel
            carries again); not scored.
    """

    family: str
    unit: str
    sample: Callable[[str, int, int], Any]
    batch_loss: Callable[[Any, int], Callable[[nn.Module, torch.Generator], torch.Tensor]]
    probes: Mapping[str, Callable[[nn.Module], float]]
    extra_probes: Mapping[str, Callable[[nn.Module], float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.probes) != {"forget", "retain"}:
            raise StructuredConfigError(
                "task.probes", f"expected probes 'forget' and 'retain', got {sorted(self.probes)}"
            )


@dataclass
class Method:
    """A model under attack; ``grad_mask`` freezes parameter slices during the attack (a diagnostic)."""

    model: nn.Module
    grad_mask: GradMask | None = None
    note: str = ""


def run_attack(method: Method | nn.Module, task: AttackTask, point: GridPoint) -> dict[str, list[float]]:
    """One attack: ``{"steps", "forget", "retain"}`` curves (probed every ``point.attack.eval_every`` steps)."""
    method = method if isinstance(method, Method) else Method(method)
    data = task.sample(point.data, point.attack.num_samples, point.attack.seed)
    if data is None or len(data) == 0:
        raise StructuredConfigError("attack_set", f"the {point.data} attack set is empty")
    probes = {"forget": task.probes["forget"], "retain": task.probes["retain"], **task.extra_probes}  # forget first:
    # attack_loop's concept curve
    out = attack_loop(
        method.model, task.batch_loss(data, point.attack.batch_size), probes, point.attack, grad_mask=method.grad_mask
    )
    return {"steps": list(out["steps"]), **out["curves"]}


# ---- metrics (pure functions of curves) ---------------------------------------------------------------------------
def lowest_forget(curve: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """``{"step", "forget", "retain"}`` at the curve's lowest forget loss (the first such probe)."""
    forget = np.asarray(curve["forget"], dtype=np.float64)
    if forget.size == 0:
        raise StructuredConfigError("curve.forget", "an attack curve needs at least one probe")
    i = int(forget.argmin())
    return {"step": int(curve["steps"][i]), "forget": float(forget[i]), "retain": float(curve["retain"][i])}


def kept_gap(curve: Mapping[str, Sequence[float]], reference: Mapping[str, Sequence[float]]) -> float:
    """(lowest forget − reference's lowest forget) − (retain at that step − reference's retain at its step)."""
    m, r = lowest_forget(curve), lowest_forget(reference)
    return (m["forget"] - r["forget"]) - (m["retain"] - r["retain"])


def half_recovery_step(curve: Mapping[str, Sequence[float]], reference: Mapping[str, Sequence[float]]) -> int | None:
    """The first probed step at which ``forget − reference's forget`` (same step) has fallen to half its value before
    the attack; 0 when there was no gap to begin with, None when half is never recovered."""
    if list(curve["steps"]) != list(reference["steps"]):
        raise StructuredConfigError("curve.steps", "a method and its reference must be probed at the same steps")
    gap = np.asarray(curve["forget"], dtype=np.float64) - np.asarray(reference["forget"], dtype=np.float64)
    if gap[0] <= 0:
        return 0
    hit = np.nonzero(gap <= gap[0] / 2)[0]
    return int(curve["steps"][hit[0]]) if len(hit) else None


def ratio_to_filtering(kept: float, kept_filtering: float, eps: float = 1.0e-12) -> float | None:
    """``kept / kept_filtering``; None where filtering keeps no gap (nothing to compare with)."""
    return kept / kept_filtering if kept_filtering > eps else None


def score_seed(
    curves: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
    reference: str = REFERENCE,
    filtering: str = FILTERING,
    eps: float = 1.0e-12,
) -> dict[str, dict[str, Any]]:
    """Metrics of one seed from ``curves[method][grid point] = {"steps", "forget", "retain"}``.

    Returns ``{method: {"retain_cost", "initial_forget_gap", "settings": {point: {...}}, "worst_ratio",
    "worst_setting"}}`` for every method but the reference.
    """
    if reference not in curves:
        raise StructuredConfigError("methods", f"the benchmark needs the '{reference}' model; got {sorted(curves)}")
    ref = curves[reference]
    out: dict[str, dict[str, Any]] = {}
    for method, per_point in curves.items():
        if method == reference:
            continue
        settings: dict[str, dict[str, Any]] = {}
        for point, curve in per_point.items():
            low = lowest_forget(curve)
            kept = kept_gap(curve, ref[point])
            settings[point] = {
                "lowest_forget": low["forget"],
                "retain_at_lowest": low["retain"],
                "lowest_step": low["step"],
                "half_recovery_step": half_recovery_step(curve, ref[point]),
                "kept_gap": kept,
                "ratio_to_filtering": None
                if filtering not in curves
                else ratio_to_filtering(kept, kept_gap(curves[filtering][point], ref[point]), eps),
            }
        first = next(iter(per_point.values()))
        ref_first = ref[next(iter(per_point))]
        initial_gap = first["forget"][0] - ref_first["forget"][0]
        for cell in settings.values():  # the share of the method's own deletion that survives (defined without
            # filtering, which on some families keeps nothing to compare with)
            cell["kept_fraction"] = cell["kept_gap"] / initial_gap if initial_gap > eps else None
        ratios = {p: s["ratio_to_filtering"] for p, s in settings.items() if s["ratio_to_filtering"] is not None}
        worst = min(ratios, key=ratios.get) if ratios else None
        fractions = [s["kept_fraction"] for s in settings.values() if s["kept_fraction"] is not None]
        out[method] = {
            "retain_cost": first["retain"][0] - ref_first["retain"][0],
            "initial_forget_gap": initial_gap,
            "settings": settings,
            "worst_setting": worst,
            "worst_ratio": ratios[worst] if worst is not None else None,
            "ratio_defined_settings": len(ratios),
            "worst_kept_gap": min(s["kept_gap"] for s in settings.values()),
            "worst_kept_fraction": min(fractions) if fractions else None,
        }
    return out


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, min, max and a Student-t ``confidence`` interval of the mean (None for fewer than two values)."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return {"per_seed": list(values), "mean": None, "min": None, "max": None, "interval": None}
    half = None
    if x.size > 1:
        half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return {
        "per_seed": list(values),
        "mean": float(x.mean()),
        "min": float(x.min()),
        "max": float(x.max()),
        "interval": None if half is None else [float(x.mean()) - half, float(x.mean()) + half],
    }


def summarize_seeds(per_seed: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The ``methods`` block of ``robustness.json`` from :func:`score_seed` results, one per seed."""
    if not per_seed:
        raise StructuredConfigError("seeds", "no seed results to summarize")
    out: dict[str, dict[str, Any]] = {}
    for method in per_seed[0]:
        rows = [s[method] for s in per_seed]
        cost = mean_interval([r["retain_cost"] for r in rows])
        settings = {}
        for point in rows[0]["settings"]:
            cells = [r["settings"][point] for r in rows]
            settings[point] = {
                key: mean_interval([c[key] for c in cells])
                for key in ("kept_gap", "kept_fraction", "ratio_to_filtering", "lowest_forget", "retain_at_lowest")
            }
            halves = [c["half_recovery_step"] for c in cells]
            settings[point]["half_recovery_step"] = {
                "per_seed": halves,
                "never_recovered": sum(h is None for h in halves),
            }
        out[method] = {
            "ratio_to_filtering": mean_interval([r["worst_ratio"] for r in rows]),
            "worst_setting_per_seed": [r["worst_setting"] for r in rows],
            "ratio_defined_settings_per_seed": [r["ratio_defined_settings"] for r in rows],
            "worst_kept_gap": mean_interval([r["worst_kept_gap"] for r in rows]),
            "worst_kept_fraction": mean_interval([r["worst_kept_fraction"] for r in rows]),
            "retain_cost": cost["mean"],
            "retain_cost_per_seed": cost,
            "initial_forget_gap": mean_interval([r["initial_forget_gap"] for r in rows]),
            "settings": settings,
        }
    return out


# ---- the benchmark ------------------------------------------------------------------------------------------------
def run_benchmark(
    methods: Mapping[str, Method | nn.Module],
    task: AttackTask,
    grid: Sequence[GridPoint],
    progress: bool = True,
    desc: str = "attacks",
) -> dict[str, Any]:
    """Attack every method at every grid point (one seed); returns ``{"curves", "scores", "attack_seconds"}``.

    ``methods`` must hold the ``reference`` (the unregularized recipe) and should hold document ``filtering``
    (without it no ratio to filtering exists and only kept gaps and fractions are reported).
    """
    if not grid:
        raise StructuredConfigError("attack_grid", "the attack grid is empty")
    if REFERENCE not in methods:
        raise StructuredConfigError("methods", f"the benchmark needs a '{REFERENCE}' model; got {sorted(methods)}")
    curves: dict[str, dict[str, dict[str, list[float]]]] = {name: {} for name in methods}
    start = time.perf_counter()
    jobs = [(name, point) for name in methods for point in grid]
    for name, point in tqdm(jobs, desc=desc, disable=not progress, leave=False):
        curves[name][point.name] = run_attack(methods[name], task, point)
    return {"curves": curves, "scores": score_seed(curves), "attack_seconds": time.perf_counter() - start}


def require_concept(model: nn.Module, concept: str, what: str = "anchored model") -> None:
    """Fail naming the concept when ``model``'s concept map lacks it."""
    names = [c.name for c in ConceptMap.of(model)]
    if concept not in names:
        raise StructuredConfigError(
            "concept", f"the {what} has no concept '{concept}' in its concept map; it has {names}"
        )


def check_methods(requested: Sequence[str], known: Sequence[str], family: str) -> list[str]:
    """The requested method names, or an error naming the unknown one and the family's methods."""
    requested = list(requested)
    if not requested:
        raise StructuredConfigError("methods", "name at least one deleted model to attack")
    for name in requested:
        if name not in known:
            raise StructuredConfigError(
                "methods", f"unknown method {name!r} for {family}; expected some of {list(known)}"
            )
    return requested


# ---- reports ------------------------------------------------------------------------------------------------------
def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def robustness_markdown(result: Mapping[str, Any]) -> str:
    """The summary table (worst-case ratio to filtering per method, retain cost) and the per-setting kept gaps."""
    unit = result.get("unit", "")
    n = len(result.get("seeds", []))
    lines = [
        f"Relearning benchmark, {result.get('family', '')} '{result.get('concept', '')}', {n} seed(s) "
        f"{result.get('seeds', [])}; forget/retain in {unit}. Ratio: kept gap / document filtering's kept gap, "
        "worst case over the settings where filtering keeps a gap; kept fraction: kept gap / the method's "
        "forget gap before the attack, worst case over the grid; interval: 95 % t-interval of the mean over "
        "seeds.",
        "",
        "| method | ratio to filtering: mean [95 % interval] | min over seeds | settings with a ratio | "
        "worst kept gap | worst kept fraction | retain cost | forget gap before attack |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    total = len(result["attack_grid"])
    for name, m in result["methods"].items():
        r = m["ratio_to_filtering"]
        iv = r.get("interval")
        iv_s = "" if iv is None else f" [{iv[0]:.2f}, {iv[1]:.2f}]"
        defined = m.get("ratio_defined_settings_per_seed", [])
        lines.append(
            f"| {name} | {_fmt(r['mean'])}{iv_s} | {_fmt(r['min'])} | "
            f"{min(defined, default=0)}-{max(defined, default=0)} of {total} | "
            f"{_fmt(m['worst_kept_gap']['mean'], '+.4f')} | {_fmt(m['worst_kept_fraction']['mean'])} | "
            f"{_fmt(m['retain_cost'], '+.4f')} | {_fmt(m['initial_forget_gap']['mean'], '+.4f')} |"
        )
    points = [p["name"] for p in result["attack_grid"]]
    lines += [
        "",
        "Kept gap per attack setting (mean over seeds; in brackets: the ratio to filtering; "
        "half: steps until half the deletion is recovered, seed-mean of those that did, ∞ = never):",
        "",
        "| method | " + " | ".join(points) + " |",
        "|---|" + "---:|" * len(points),
    ]
    for name, m in result["methods"].items():
        cells = []
        for p in points:
            s = m["settings"][p]
            halves = [h for h in s["half_recovery_step"]["per_seed"] if h is not None]
            half = "∞" if not halves else f"{np.mean(halves):.0f}"
            cells.append(
                f"{_fmt(s['kept_gap']['mean'], '+.3g')} ({_fmt(s['ratio_to_filtering']['mean'])}; half {half})"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if result.get("wall_time_s") is not None:
        lines += [
            "",
            f"Wall time {result['wall_time_s']:.0f} s (training {result.get('train_seconds', 0):.0f} s, "
            f"attacks {result.get('attack_seconds', 0):.0f} s).",
        ]
    return "\n".join(lines) + "\n"


def plot_robustness_curves(result: Mapping[str, Any], path: Any, title: str = "") -> Any:
    """Recovery curves of the first seed: held-out forget loss during each attack, one panel per grid point, one
    line per method (the reference and filtering dashed)."""
    curves = result["curves"]
    points = [p["name"] for p in result["attack_grid"]]
    cols = min(4, len(points))
    rows = math.ceil(len(points) / cols)
    legend_in = 0.8  # inches under the panels for the legend (two rows of entries)
    height = 2.9 * rows + legend_in
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, height), squeeze=False)
    for ax, point in zip(axes.flat, points):
        for name, per_point in curves.items():
            c = per_point[point]
            ax.plot(c["steps"], c["forget"], label=name, ls="--" if name in (REFERENCE, FILTERING) else "-", lw=1.2)
        ax.set_title(point, fontsize=9)
        ax.set_xlabel("attack step", fontsize=8)
        ax.set_ylabel(f"held-out forget ({result.get('unit', '')})", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(points) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1 - 0.35 / height))
    return save_figure(fig, path, dpi=110, title=title, tight=False)


@dataclass
class BenchmarkResult:
    """Accumulates seeds into the ``robustness.json`` contract."""

    family: str
    concept: str
    unit: str
    grid: Sequence[GridPoint]
    seeds: list[int] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)
    first_curves: dict[str, Any] | None = None
    train_seconds: float = 0.0
    attack_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, seed: int, run: Mapping[str, Any], train_seconds: float = 0.0) -> None:
        self.seeds.append(seed)
        self.scores.append(run["scores"])
        self.first_curves = self.first_curves or run["curves"]
        self.train_seconds += train_seconds
        self.attack_seconds += run["attack_seconds"]

    def to_dict(self, wall_time_s: float | None = None) -> dict[str, Any]:
        return {
            "family": self.family,
            "concept": self.concept,
            "unit": self.unit,
            "seeds": self.seeds,
            "attack_grid": [p.to_dict() for p in self.grid],
            "methods": summarize_seeds(self.scores),
            "per_seed": self.scores,
            "curves": self.first_curves,
            "train_seconds": self.train_seconds,
            "attack_seconds": self.attack_seconds,
            "wall_time_s": wall_time_s,
            **self.extra,
        }


# ---- deleted variants shared by the transformer families ----------------------------------------------------------
def _writers_frozen(site: str, axes: Sequence[int]) -> GradMask:
    """Freeze the channel's writers up to the site (the slices ``ablate`` zeroed) during an attack."""
    return lambda m: channel_slices(m, axes=axes, site=site, side="writers")


def transformer_variants(anchored: nn.Module, concept: str, wanted: Sequence[str]) -> dict[str, Method]:
    """The anchored model's deleted variants: ``anchored+ablate`` (writers up to the site), ``anchored+two-sided``
    (readers at every depth too), ``anchored+ablate (writers frozen)`` (ablate, attacked with the emptied writer slices
    frozen: can the attack reopen the channel without them?), ``anchored (not deleted)``."""
    site, axes = resolve_axes(anchored, concept)
    out: dict[str, Method] = {}
    if "anchored+ablate" in wanted or "anchored+ablate (writers frozen)" in wanted:
        ablated = ablate(anchored, concept)
        if "anchored+ablate" in wanted:
            out["anchored+ablate"] = Method(ablated)
        if "anchored+ablate (writers frozen)" in wanted:
            out["anchored+ablate (writers frozen)"] = Method(
                ablated, grad_mask=_writers_frozen(site, axes), note="attacked with the channel's writers frozen"
            )
    if "anchored+two-sided" in wanted:
        out["anchored+two-sided"] = Method(two_sided_cut(anchored, concept))
    if "anchored (not deleted)" in wanted:
        out["anchored (not deleted)"] = Method(anchored)
    return out


# ---- full-depth isolation (training/isolation.py), shared by every family ----------------------------------------
ISOLATED_METHODS = ("isolated+delete", "isolated+delete (dedicated frozen)", "isolated (not deleted)")


def isolated_variants(isolated: nn.Module, wanted: Sequence[str]) -> dict[str, Method]:
    """``isolated+delete`` (every dedicated entry of the model's isolated concept zeroed), ``isolated+delete
    (dedicated frozen)`` (a diagnostic: attacked with the zeroed entries frozen, so whatever comes back lives in the
    shared weights) and ``isolated (not deleted)``, from a model trained with an ``isolation:`` recipe section (its
    config records the units)."""
    if not getattr(isolated.config, "isolation", None):
        raise StructuredConfigError(
            "methods",
            "the isolated methods need a model trained with an `isolation:` recipe section; this one records none",
        )
    out: dict[str, Method] = {}
    deleted = delete_isolated(isolated)
    if "isolated+delete" in wanted:
        out["isolated+delete"] = Method(deleted)
    if "isolated+delete (dedicated frozen)" in wanted:
        out["isolated+delete (dedicated frozen)"] = Method(
            deleted, grad_mask=dedicated_slices, note="attacked with every dedicated entry frozen at 0"
        )
    if "isolated (not deleted)" in wanted:
        out["isolated (not deleted)"] = Method(isolated)
    return out


def split_isolated(recipe: Any, methods: Sequence[str]) -> tuple[Any, Any | None]:
    """``(the recipe without isolation, the isolated recipe or None)``: the anchored and the isolated model are trained
    from the same recipe file, the anchored one without its ``isolation:`` section."""
    wants = any(m in ISOLATED_METHODS for m in methods)
    if wants and getattr(recipe, "isolation", None) is None:
        raise StructuredConfigError(
            "methods",
            "'isolated+delete' / 'isolated (not deleted)' need a recipe with an "
            "`isolation:` section (e.g. configs/color_autoencoder/ex2.11.2-isolated.yaml)",
        )
    return dataclasses.replace(recipe, isolation=None), (recipe if wants else None)


# ---- M2: the color autoencoder -------------------------------------------------------------------------------------
COLOR_AUTOENCODER_METHODS = (
    "anchored+prune",
    "anchored+ablate",
    "anchored+two-sided",
    "post-hoc",
    "anchored (not deleted)",
    "distilled (deleted teacher)",
    "distilled (undeleted teacher)",
    "distilled (filtered teacher)",
    *ISOLATED_METHODS,
)
# A distilled student starts from another seed than the recipe's (whose initial weights the teachers share): students
# that share a teacher's initialization inherit what it still knows (Cloud et al. 2025).
STUDENT_SEED_OFFSET = 10_000


def distil_student(recipe: Any, teacher: nn.Module) -> tuple[nn.Module, float]:
    """A fresh model of ``recipe`` (seed + :data:`STUDENT_SEED_OFFSET`) trained on the teacher's outputs only, through
    the recipe's ``distill`` path (:mod:`structured_hf.training.distill`); returns ``(student, train seconds)``."""
    with tempfile.TemporaryDirectory() as folder:
        teacher.save_pretrained(folder)
        student = dataclasses.replace(
            recipe, seed=recipe.seed + STUDENT_SEED_OFFSET, distill={"teacher": folder, "temperature": 1.0}
        )
        return train_recipe(student)


def far_samples(anchor: Any, num: int, min_similarity: float, seed: int) -> np.ndarray:
    """``num`` colors drawn uniformly from the RGB cube with similarity < ``min_similarity`` to the anchor."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < num:
        cand = rng.random((4096, 3))
        out.extend(cand[hsv_similarity(cand, anchor) < min_similarity])
    return np.asarray(out[:num])


def color_autoencoder_task(anchor: Any, min_similarity: float = 0.5, probe_seed: int = 123_457) -> AttackTask:
    """Forget = colors with similarity >= ``min_similarity`` to the anchor (the training distribution's concept
    neighbourhood, never the prototype), retain = the 8³ grid's colors below it; probes: 256 held-out concept colors
    (their own seed) and the retain grid, MSE."""
    grid = rgb_grid(8)
    retain = grid[hsv_similarity(grid, anchor) < min_similarity]
    held_out = concept_samples(anchor, 256, min_similarity, probe_seed)

    def sample(kind: str, n: int, seed: int) -> torch.Tensor:
        colors = (
            concept_samples(anchor, n, min_similarity, seed)
            if kind == "forget"
            else far_samples(anchor, n, min_similarity, seed)
        )
        return torch.as_tensor(colors, dtype=torch.float32)

    def batch_loss(data: torch.Tensor, batch_size: int) -> Callable[[nn.Module, torch.Generator], torch.Tensor]:
        def step(m: nn.Module, g: torch.Generator) -> torch.Tensor:
            batch = data[torch.randint(len(data), (batch_size,), generator=g)].to(m.device)
            return m(colors=batch, labels=batch).loss

        return step

    def mse(colors: np.ndarray) -> Callable[[nn.Module], float]:
        return lambda m: float(((reconstruct(m, colors) - colors) ** 2).mean())

    return AttackTask("color_autoencoder", "MSE", sample, batch_loss, {"forget": mse(held_out), "retain": mse(retain)})


def color_autoencoder_methods(
    recipe: Any, concept: str, methods: Sequence[str], min_similarity: float = 0.5, label: str | None = None
) -> tuple[dict[str, Method], AttackTask, float]:
    """Train the anchored recipe, its unregularized twin (the reference) and the twin on data without the concept's
    neighbourhood (document filtering), all with the recipe's budget; build the requested deleted variants
    (``post-hoc``: the twin with the label-weighted mean-difference direction projected out of the bottleneck).
    Returns ``(methods, task, training seconds)``."""
    methods = check_methods(methods, COLOR_AUTOENCODER_METHODS, "the color autoencoder")
    anchor = recipe_concept_anchor(recipe, concept)
    label = label or concept
    labelers = parse_labelers(recipe.data.get("labels"))
    if "post-hoc" in methods and label not in labelers:
        raise StructuredConfigError(
            "label", f"no weak label '{label}' for the post-hoc direction; have {sorted(labelers)}"
        )
    near = lambda c: hsv_similarity(c, anchor) >= min_similarity  # noqa: E731
    recipe, isolated_recipe = split_isolated(recipe, methods)
    anchored, t_a = (None, 0.0)
    if any(m not in ISOLATED_METHODS for m in methods):
        anchored, t_a = train_recipe(recipe)
        require_concept(anchored, concept)
    reference, t_r = train_recipe(unanchored_recipe(recipe))
    filtered, t_f = train_recipe(unanchored_recipe(recipe), keep=lambda c: ~near(c))
    out = {REFERENCE: Method(reference), FILTERING: Method(filtered)}
    if isolated_recipe is not None:
        isolated, t_i = train_recipe(isolated_recipe)
        out.update(isolated_variants(isolated, methods))
        t_a += t_i
    teachers = {
        "distilled (deleted teacher)": lambda: prune(anchored, concept),
        "distilled (undeleted teacher)": lambda: anchored,
        "distilled (filtered teacher)": lambda: filtered,
    }
    for name in methods:
        if name in teachers:  # the student: the unregularized recipe, fresh, on every training color, teacher's outputs
            student, t_s = distil_student(unanchored_recipe(recipe), teachers[name]())
            out[name], t_a = Method(student), t_a + t_s
        elif name == "anchored+prune":
            out[name] = Method(prune(anchored, concept))
        elif name == "anchored+ablate":
            out[name] = Method(ablate(anchored, concept))
        elif name == "anchored+two-sided":
            out[name] = Method(two_sided_cut(anchored, concept))
        elif name == "post-hoc":
            grid = rgb_grid(8)
            direction = mean_difference_direction(reference, grid, labelers[label](grid))
            out[name] = Method(project_out(reference, direction, name=f"{concept} (mean difference)"))
        elif name == "anchored (not deleted)":
            out[name] = Method(anchored)
    return (
        {k: out[k] for k in [REFERENCE, FILTERING, *methods]},
        color_autoencoder_task(anchor, min_similarity),
        t_a + t_r + t_f,
    )


# ---- M3: the color-operation transformer ---------------------------------------------------------------------------
COLOR_TRANSFORMER_METHODS = (
    "anchored+ablate",
    "anchored+two-sided",
    "anchored+ablate (writers frozen)",
    "post-hoc",
    "anchored (not deleted)",
    *ISOLATED_METHODS,
)


class _Rows(dict):
    """Task arrays (``op``, ``colors``, ``operand_mask``, ``target``) whose length is their number of examples."""

    def __len__(self) -> int:
        return int(len(self["op"]))


def _rows(arrays: Mapping[str, torch.Tensor], idx: np.ndarray) -> _Rows:
    index = torch.as_tensor(np.asarray(idx, dtype=np.int64))
    return _Rows({k: v[index] for k, v in arrays.items()})


def color_transformer_task(splits: Any) -> AttackTask:
    """Forget = red-involving training examples (an operand's or the result's redness >= 0.6), retain-only = the
    training examples far from red (< 0.2); probes: the same two groups of the test split, MSE of the prediction."""
    train, test = task_arrays(splits["train"]), task_arrays(splits["test"])
    red_train, red_test = example_redness(train), example_redness(test)
    pools = {"forget": np.flatnonzero(red_train >= RED_INVOLVED), "retain": np.flatnonzero(red_train < RED_FAR)}

    def sample(kind: str, n: int, seed: int) -> _Rows:
        pool = pools[kind]
        if len(pool) < n:
            raise StructuredConfigError("attack_grid.sizes", f"only {len(pool)} {kind} training examples, asked {n}")
        return _rows(train, np.random.default_rng(seed).choice(pool, n, replace=False))

    def batch_loss(data: _Rows, batch_size: int) -> Callable[[nn.Module, torch.Generator], torch.Tensor]:
        def step(m: nn.Module, g: torch.Generator) -> torch.Tensor:
            i = torch.randint(len(data), (batch_size,), generator=g)
            return m(
                op_ids=data["op"][i],
                colors=data["colors"][i],
                operand_mask=data["operand_mask"][i],
                labels=data["target"][i],
            ).loss

        return step

    def mse(arrays: Mapping[str, torch.Tensor]) -> Callable[[nn.Module], float]:
        @torch.no_grad()
        def probe(m: nn.Module) -> float:
            out = m(op_ids=arrays["op"], colors=arrays["colors"], operand_mask=arrays["operand_mask"]).prediction
            return float(((out - arrays["target"]) ** 2).mean())

        return probe

    return AttackTask(
        "color_transformer",
        "MSE",
        sample,
        batch_loss,
        {
            "forget": mse(_rows(test, np.flatnonzero(red_test >= RED_INVOLVED))),
            "retain": mse(_rows(test, np.flatnonzero(red_test < RED_FAR))),
        },
    )


def color_transformer_methods(
    recipe: Any, concept: str, methods: Sequence[str], label: str | None = None
) -> tuple[dict[str, Method], AttackTask, float]:
    """Train the anchored recipe, its unregularized twin (reference) and the twin without red-involving training
    examples (document filtering); build the requested deleted variants (``post-hoc``: the twin's label-weighted
    mean-difference direction at the concept's site projected out of every residual writer)."""
    methods = check_methods(methods, COLOR_TRANSFORMER_METHODS, "the color transformer")
    spec = next((c for c in model_config(recipe).concepts if c["name"] == concept), None)
    if spec is None:
        raise StructuredConfigError("concept", f"the recipe's model has no concept '{concept}'")
    splits = build_task_splits(recipe)
    label = label or concept
    if "post-hoc" in methods and f"prob_{label}" not in splits["train"].column_names:
        raise StructuredConfigError("label", f"no weak label '{label}' for the post-hoc direction")
    recipe, isolated_recipe = split_isolated(recipe, methods)
    anchored, t_a = (None, 0.0)
    if any(m not in ISOLATED_METHODS and m != "post-hoc" for m in methods):
        anchored, t_a = train_recipe(recipe)
        require_concept(anchored, concept)
    reference, t_r = train_recipe(unanchored_recipe(recipe))
    filtered, t_f = train_recipe(
        unanchored_recipe(recipe), keep_rows=lambda ds: example_redness(task_arrays(ds)) < RED_INVOLVED
    )
    out = {REFERENCE: Method(reference), FILTERING: Method(filtered)}
    if anchored is not None:
        out.update(transformer_variants(anchored, concept, methods))
    if isolated_recipe is not None:
        isolated, t_i = train_recipe(isolated_recipe)
        out.update(isolated_variants(isolated, methods))
        t_a += t_i
    if "post-hoc" in methods:
        site = ConceptSpec.from_dict(spec).site
        p = np.asarray(splits["train"][f"prob_{label}"], dtype=np.float64)
        direction = residual_mean_difference(reference, task_arrays(splits["train"]), p, site)
        out["post-hoc"] = Method(project_out(reference, direction, site=site, name=f"{concept} (mean difference)"))
    return {k: out[k] for k in [REFERENCE, FILTERING, *methods]}, color_transformer_task(splits), t_a + t_r + t_f


# ---- M4: StructuredGPT on text -------------------------------------------------------------------------------------
LANGUAGE_METHODS = (
    "anchored+ablate",
    "anchored+two-sided",
    "anchored+ablate (writers frozen)",
    "post-hoc",
    "token-filtering",
    "anchored (not deleted)",
    *ISOLATED_METHODS,
)


def channel_rms(
    encoded: Sequence[Sequence[int]], site: str, axes: Sequence[int], pad: int = 0, batch_size: int = 32
) -> Callable[[nn.Module], float]:
    """A probe: the root-mean-square of the residual on ``axes`` at ``site`` over the real tokens of ``encoded``,
    relative to the RMS of the whole residual there: how much the (deleted) channel carries."""
    idx = torch.as_tensor(list(axes))

    @torch.no_grad()
    def probe(m: nn.Module) -> float:
        on, total, count, width = 0.0, 0.0, 0, 1
        for ids, labels in lm._batches(encoded, batch_size, pad):
            with capture(m, [site]) as acts:
                m(input_ids=ids, use_cache=False)
            x = acts[site].double()[labels != -100]
            on += float((x[:, idx] ** 2).sum())
            total += float((x**2).sum())
            count, width = count + x.shape[0], x.shape[-1]
        return math.sqrt(on / max(count, 1) / len(idx)) / max(math.sqrt(total / max(count, 1) / width), 1e-12)

    return probe


def language_task(
    tokenizer: Any,
    train_chunks: Any,
    test_chunks: Any,
    concept: str,
    context: int,
    probe_forget: int | None = None,
    probe_retain: int = 256,
    channel: tuple[str, Sequence[int]] | None = None,
) -> AttackTask:
    """Forget = training chunks labelled with the concept (p >= 0.5), retain-only = training chunks with every
    concept's p < 0.1; probes: the same two sets of the held-out test chunks (the first ``probe_forget`` /
    ``probe_retain``), mean next-token loss in nats. With ``channel = (site, axes)`` every attack also records
    ``channel_rms`` (:func:`channel_rms` over the forget probe): whether the attack reopens the deleted channel."""
    train_sets = lm.heldout_sets(train_chunks, [concept])
    test_sets = lm.heldout_sets(test_chunks, [concept])
    key, pad = f"forget:{concept}", lm.pad_id(tokenizer)
    pools = {"forget": train_sets[key], "retain": train_sets["retain"]}
    probes = {
        "forget": lm.encode(tokenizer, test_sets[key][:probe_forget], context),
        "retain": lm.encode(tokenizer, test_sets["retain"][:probe_retain], context),
    }

    def sample(kind: str, n: int, seed: int) -> list[list[int]]:
        pool = pools[kind]
        if len(pool) < n:
            raise StructuredConfigError("attack_grid.sizes", f"only {len(pool)} {kind} training chunks, asked {n}")
        pick = np.random.default_rng(seed).choice(len(pool), n, replace=False)
        return lm.encode(tokenizer, [pool[i] for i in pick], context)

    def batch_loss(data: list[list[int]], batch_size: int) -> Callable[[nn.Module, torch.Generator], torch.Tensor]:
        def step(m: nn.Module, g: torch.Generator) -> torch.Tensor:
            idx = torch.randint(len(data), (min(batch_size, len(data)),), generator=g).tolist()
            ids, labels = next(iter(lm._batches([data[i] for i in idx], len(idx), pad)))
            return m(input_ids=ids, labels=labels, use_cache=False).loss

        return step

    def loss(encoded: list[list[int]]) -> Callable[[nn.Module], float]:
        return lambda m: lm.mean_token_loss(m, encoded, pad_id=pad)[0]

    extra = {} if channel is None else {"channel_rms": channel_rms(probes["forget"], channel[0], channel[1], pad)}
    return AttackTask(
        "structured_gpt",
        "nats/token",
        sample,
        batch_loss,
        {"forget": loss(probes["forget"]), "retain": loss(probes["retain"])},
        extra,
    )


def language_methods(
    anchored: nn.Module,
    reference: nn.Module | None,
    filtered: nn.Module | None,
    tokenizer: Any,
    train_chunks: Any,
    concept: str,
    methods: Sequence[str],
    token_filtered: nn.Module | None = None,
    direction_chunks: int = 512,
) -> dict[str, Method]:
    """The M4 methods from trained models (the recipes are too slow to train inside a benchmark on a CPU):
    the anchored model's deleted variants, ``post-hoc`` (the reference's mean-difference direction at the anchored
    site over training forget vs retain chunks, projected out of every writer) and ``token-filtering`` (a model whose
    loss on flagged tokens was masked in training, when given).

    Without a ``reference`` the undeleted anchored model stands in for it (a diagnosis: how much of the deletion
    an attack undoes, measured against the same model attacked before deletion); without ``filtered`` there is no
    ratio to filtering."""
    methods = check_methods(methods, LANGUAGE_METHODS, "StructuredGPT")
    require_concept(anchored, concept)
    if "token-filtering" in methods and token_filtered is None:
        raise StructuredConfigError("methods", "'token-filtering' needs the token-filtered model (--token_filtered)")
    if "post-hoc" in methods and reference is None:
        raise StructuredConfigError("methods", "'post-hoc' needs the unregularized reference model (--reference)")
    out = {REFERENCE: Method(reference if reference is not None else anchored)}
    if filtered is not None:
        out[FILTERING] = Method(filtered)
    out.update(transformer_variants(anchored, concept, methods))
    if any(m in ISOLATED_METHODS for m in methods):  # the anchored folder is a model trained with `isolation:`
        out.update(isolated_variants(anchored, methods))
    if "post-hoc" in methods:
        site = ConceptMap.of(anchored)[concept].site
        sets = lm.heldout_sets(train_chunks, [concept])
        direction = lm.mean_difference_direction(
            reference, tokenizer, sets[f"forget:{concept}"][:direction_chunks], sets["retain"][:direction_chunks], site
        )
        out["post-hoc"] = Method(project_out(reference, direction, site=site, name=f"{concept} (mean difference)"))
    if "token-filtering" in methods:
        out["token-filtering"] = Method(token_filtered)
    return {k: out[k] for k in [REFERENCE, FILTERING, *methods] if k in out}


# ---- absorption: does the anchored direction take in what the weak labeller missed? -----------------------------
@torch.no_grad()
def axis_share(
    model: nn.Module,
    encoded: Sequence[Sequence[int]],
    site: str,
    axes: Sequence[int],
    pad: int = 0,
    batch_size: int = 32,
) -> float:
    """Share of the residual's energy at ``site`` that lies on ``axes`` (Σ x_axes² / Σ x² over the real tokens);
    a direction that ignores the text would hold about ``len(axes) / width`` of it."""
    idx = torch.as_tensor(list(axes))
    on, total = 0.0, 0.0
    model.eval()
    for ids, labels in lm._batches(encoded, batch_size, pad):
        with capture(model, [site]) as acts:
            model(input_ids=ids, use_cache=False)
        x = acts[site].double()[labels != -100]
        on, total = on + float((x[:, idx] ** 2).sum()), total + float((x**2).sum())
    return on / max(total, 1e-300)


def absorption_report(
    anchored: nn.Module,
    concept: str,
    tokenizer: Any,
    texts: Sequence[str],
    human: Sequence[int],
    weak_prob: Sequence[float],
    reference: nn.Module | None = None,
    filtered: nn.Module | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """For hand-labelled passages, split into the concept's passages the weak labeller caught (p >= ``threshold``),
    those it missed, and the passages without the concept: the share of the anchored model's residual on the
    concept's axes at its site, and how much deletion (``ablate``) raises each group's loss; with ``reference`` and
    ``filtered`` also how much document filtering raises it (filtering only removed what the labeller caught)."""
    human, weak = np.asarray(human, dtype=int), np.asarray(weak_prob, dtype=np.float64)
    if len(human) != len(texts) or len(weak) != len(texts):
        raise StructuredConfigError("texts", "texts, human labels and weak probabilities must have one entry each")
    require_concept(anchored, concept)
    site, axes = resolve_axes(anchored, concept)
    deleted = ablate(anchored, concept)
    pad, context = lm.pad_id(tokenizer), lm.context_length(anchored)
    groups = {
        "labelled (caught by the weak labeller)": (human == 1) & (weak >= threshold),
        "missed by the weak labeller": (human == 1) & (weak < threshold),
        "without the concept": human == 0,
    }
    out: dict[str, Any] = {
        "concept": concept,
        "site": site,
        "axes": list(axes),
        "chance_share": len(axes) / anchored.config.hidden_size,
        "groups": {},
    }
    for name, mask in groups.items():
        chosen = [t for t, keep in zip(texts, mask) if keep]
        if not chosen:
            out["groups"][name] = {"passages": 0}
            continue
        enc = lm.encode(tokenizer, chosen, context)
        base = lm.mean_token_loss(anchored, enc, pad_id=pad)[0]
        row = {
            "passages": len(chosen),
            "axis_share": axis_share(anchored, enc, site, axes, pad),
            "ablate_loss_increase": lm.mean_token_loss(deleted, enc, pad_id=pad)[0] - base,
        }
        if reference is not None and filtered is not None:
            row["filtering_loss_increase"] = (
                lm.mean_token_loss(filtered, enc, pad_id=pad)[0] - lm.mean_token_loss(reference, enc, pad_id=pad)[0]
            )
        out["groups"][name] = row
    return out


__all__ = [
    "AttackTask",
    "BenchmarkResult",
    "DEFAULT_LRS",
    "DEFAULT_SIZES",
    "FILTERING",
    "GridPoint",
    "Method",
    "REFERENCE",
    "COLOR_AUTOENCODER_METHODS",
    "COLOR_TRANSFORMER_METHODS",
    "ISOLATED_METHODS",
    "LANGUAGE_METHODS",
    "STUDENT_SEED_OFFSET",
    "absorption_report",
    "attack_grid",
    "axis_share",
    "channel_rms",
    "check_methods",
    "distil_student",
    "color_autoencoder_methods",
    "color_autoencoder_task",
    "color_transformer_methods",
    "color_transformer_task",
    "far_samples",
    "isolated_variants",
    "language_methods",
    "split_isolated",
    "language_task",
    "transformer_variants",
    "half_recovery_step",
    "kept_gap",
    "lowest_forget",
    "mean_interval",
    "plot_robustness_curves",
    "ratio_to_filtering",
    "require_concept",
    "robustness_markdown",
    "run_attack",
    "run_benchmark",
    "score_seed",
    "summarize_seeds",
]
