"""Control of a concept in the color transformer (M3): per-operation error on examples that involve the concept vs
examples far from it, before and after suppression and deletion.

Variants (each evaluated on the same test examples, eval mode):

- ``baseline``: the model as trained;
- ``suppress:<c>``: inference-time hard-hemisphere suppression of the concept's direction at its anchored site
  (:func:`structured_hf.interventions.intervene`; every token position of the site is rewritten);
- ``ablate:<c>``: permanent deletion of the concept's axes from every weight that writes (and reads) the residual
  stream up to the site (:func:`structured_hf.interventions.ablate`, see :mod:`structured_hf.interventions.residual`);
- ``ablate:<c>@<qk site>``: for each concept anchored at an attention query/key site, the deletion of its axes there.

For every variant and operation the report holds the MSE on red-involving and far-from-red examples (thresholds of
:mod:`structured_hf.evaluation.color_tasks`) and their ratios to the baseline. The M3 target: the red-involving error
rises at least 10x while the far error stays within 1.5x, for every operation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..concepts import ConceptMap
from ..errors import StructuredConfigError
from ..interventions import ablate, intervene
from ..visualization.style import save_figure
from .color_tasks import per_operation_errors

RED_RATIO_TARGET = 10.0
FAR_RATIO_TARGET = 1.5


def control_variants(model: torch.nn.Module, concepts: Sequence[str] | None = None) -> list[tuple[str, Any, list]]:
    """``(name, model, intervention specs)`` for the baseline and, per direction concept, suppression and deletion."""
    cmap = ConceptMap.of(model)
    names = list(concepts) if concepts is not None else [c.name for c in cmap if c.direction is not None]
    variants: list[tuple[str, Any, list]] = [("baseline", model, [])]
    for name in names:
        spec = cmap[name]
        if spec.direction is not None:
            variants.append((f"suppress:{name}", model, [f"suppress:{name}"]))
        label = f"ablate:{name}" if ".residual_" in spec.site else f"ablate:{name}@{spec.site}"
        variants.append((label, ablate(model, name), []))
    return variants


def control_evaluation(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    concepts: Sequence[str] | None = None,
    variants: Sequence[tuple[str, Any, list]] | None = None,
) -> dict[str, Any]:
    """Per variant and operation: ``{"red", "far", "all", "red_ratio", "far_ratio", "n_red", "n_far"}``, plus
    ``summary[variant] = {"min_red_ratio", "max_far_ratio", "meets_target"}`` (targets 10x and 1.5x)."""
    operations = list(model.config.operations)
    variants = list(variants) if variants is not None else control_variants(model, concepts)
    if not variants or variants[0][0] != "baseline":
        raise StructuredConfigError("variants", "the first variant must be the baseline")
    errors = {}
    for name, variant, specs in variants:
        if specs:
            with intervene(variant, specs):
                errors[name] = per_operation_errors(variant, dataset, operations)
        else:
            errors[name] = per_operation_errors(variant, dataset, operations)
    base = errors["baseline"]
    report: dict[str, Any] = {
        "operations": operations,
        "variants": {},
        "summary": {},
        "targets": {"red_ratio_min": RED_RATIO_TARGET, "far_ratio_max": FAR_RATIO_TARGET},
    }
    for name, per_op in errors.items():
        rows = {}
        for op in operations:
            row = dict(per_op[op])
            row["red_ratio"] = row["red"] / base[op]["red"] if base[op]["red"] > 0 else float("nan")
            row["far_ratio"] = row["far"] / base[op]["far"] if base[op]["far"] > 0 else float("nan")
            rows[op] = row
        report["variants"][name] = rows
        if name != "baseline":
            red = [rows[op]["red_ratio"] for op in operations if np.isfinite(rows[op]["red_ratio"])]
            far = [rows[op]["far_ratio"] for op in operations if np.isfinite(rows[op]["far_ratio"])]
            report["summary"][name] = {
                "min_red_ratio": min(red) if red else float("nan"),
                "max_far_ratio": max(far) if far else float("nan"),
                "meets_target": bool(red and far and min(red) >= RED_RATIO_TARGET and max(far) <= FAR_RATIO_TARGET),
            }
    return report


def control_markdown(report: dict[str, Any]) -> str:
    """A per-operation markdown table: MSE on red-involving / far examples and the ratios to the baseline."""
    lines = [
        "| variant | operation | red-involving MSE | ×baseline | far-from-red MSE | ×baseline | n red / far |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, rows in report["variants"].items():
        for op in report["operations"]:
            r = rows[op]
            red_ratio, far_ratio = (
                ("", "") if name == "baseline" else (f"{r['red_ratio']:.2f}", f"{r['far_ratio']:.2f}")
            )
            lines.append(
                f"| {name} | {op} | {r['red']:.2e} | {red_ratio} | {r['far']:.2e} | {far_ratio} | "
                f"{r['n_red']} / {r['n_far']} |"
            )
    t = report["targets"]
    lines += [
        "",
        (
            f"Target: red-involving ×baseline ≥ {t['red_ratio_min']:g} and far ×baseline ≤ "
            f"{t['far_ratio_max']:g} for every operation."
        ),
    ]
    for name, s in report["summary"].items():
        lines.append(
            f"- {name}: lowest red ratio {s['min_red_ratio']:.2f}, highest far ratio "
            f"{s['max_far_ratio']:.2f} → {'met' if s['meets_target'] else 'not met'}"
        )
    return "\n".join(lines) + "\n"


def plot_control_ratios(report: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Grouped bars (log scale): per operation, each variant's red-involving and far-from-red error ratio."""
    names = [n for n in report["variants"] if n != "baseline"]
    ops = report["operations"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    width = 0.8 / max(len(names), 1)
    for ax, key, target, label in (
        (axes[0], "red_ratio", RED_RATIO_TARGET, "red-involving"),
        (axes[1], "far_ratio", FAR_RATIO_TARGET, "far from red"),
    ):
        for k, name in enumerate(names):
            values = [report["variants"][name][op][key] for op in ops]
            ax.bar(np.arange(len(ops)) + (k - (len(names) - 1) / 2) * width, values, width, label=name)
        ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target:g}x")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xticks(range(len(ops)), ops)
        ax.set_yscale("log")
        ax.set_title(f"{label}: MSE after / before")
    axes[0].legend(fontsize=8)
    return save_figure(fig, path, title=title)


__all__ = ["control_evaluation", "control_markdown", "control_variants", "plot_control_ratios"]
