"""Seed sweeps: the distribution of each score over seeds, and a Pareto pick of the best run (the
reference chose on the front of validation reconstruction, validation anchor error and score)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import StructuredConfigError
from .tables import summarize

logger = logging.getLogger(__name__)


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"`` -> [0, 3, 7]; ranges and lists combine (``"0-2,10"``)."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        lo, sep, hi = part.partition("-")
        try:
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise StructuredConfigError("--seeds", f"expected integers or ranges like 0-4, got {part!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise StructuredConfigError("--seeds", f"expected distinct seeds, got {text!r}")
    return seeds


def pareto_front(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the non-dominated points. A point dominates another if it is at least as good on every objective
    and better on one; ``maximize[k]`` says which way objective ``k`` improves. NaN counts as worst."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(maximize):
        raise StructuredConfigError("pareto", f"expected points of {len(maximize)} objectives, got shape {arr.shape}")
    signed = np.where(np.asarray(maximize), -arr, arr)  # minimize everything
    signed = np.where(np.isnan(signed), np.inf, signed)
    front = []
    for i in range(len(signed)):
        dominated = np.any(np.all(signed <= signed[i], axis=1) & np.any(signed < signed[i], axis=1))
        if not dominated:
            front.append(i)
    return front


def summarize_sweep(runs: Sequence[Mapping[str, Any]], primary: str | None = None) -> dict[str, Any]:
    """Summary of per-seed runs.

    Each run has ``seed``, ``reconstruction`` (lower is better, e.g. the baseline's worst named-color MSE),
    ``anchor_error`` (lower is better, e.g. 1 − cosine of the anchored concept; may be None) and ``scores``
    (``{variant: r²}``). The Pareto front uses (reconstruction, anchor_error, scores[primary]); the pick is the front
    member with the highest primary score.
    """
    if not runs:
        raise StructuredConfigError("sweep", "no runs to summarize")
    variants = sorted({v for r in runs for v in r["scores"]})
    primary = primary or (variants[0] if variants else None)
    out: dict[str, Any] = {
        "seeds": [r["seed"] for r in runs],
        "scores": {v: summarize([r["scores"].get(v) for r in runs]) for v in variants},
        "reconstruction": summarize([r["reconstruction"] for r in runs]),
        "primary": primary,
    }
    if primary is not None:
        points = [
            [
                r["reconstruction"],
                np.nan if r.get("anchor_error") is None else r["anchor_error"],
                np.nan if r["scores"].get(primary) is None else r["scores"][primary],
            ]
            for r in runs
        ]
        if all(np.isnan(p[1]) for p in points):
            points = [[p[0], 0.0, p[2]] for p in points]  # no anchor: a constant objective changes nothing
        front = pareto_front(points, [False, False, True])
        best = max(front, key=lambda i: (np.nan_to_num(points[i][2], nan=-np.inf), -points[i][0]))
        out["pareto_front"] = [runs[i]["seed"] for i in front]
        out["pick"] = {
            "seed": runs[best]["seed"],
            "reconstruction": points[best][0],
            "anchor_error": runs[best].get("anchor_error"),
            "score": runs[best]["scores"].get(primary),
        }
    return out


def sweep_markdown(summary: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    lines = [f"Seeds: {summary['seeds']}", "", "| score | min | mean | max | n |", "|---|---:|---:|---:|---:|"]
    for name, s in summary["scores"].items():
        fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
        lines.append(f"| `{name}` | {fmt(s['min'])} | {fmt(s['mean'])} | {fmt(s['max'])} | {s['n']} |")
    if "pick" in summary:
        p = summary["pick"]
        lines += [
            "",
            f"Pareto front (reconstruction ↓, anchor error ↓, `{summary['primary']}` ↑): seeds "
            f"{summary['pareto_front']}; pick: seed {p['seed']} (score {p['score']:.4f}, worst named-color "
            f"MSE {p['reconstruction']:.5f})",
        ]
    lines += [
        "",
        "| seed | worst named MSE | anchor error | " + " | ".join(f"`{v}`" for v in summary["scores"]) + " |",
        "|---:|---:|---:|" + "---:|" * len(summary["scores"]),
    ]
    for r in runs:
        ae = "n/a" if r.get("anchor_error") is None else f"{r['anchor_error']:.4f}"
        lines.append(
            f"| {r['seed']} | {r['reconstruction']:.5f} | {ae} | "
            + " | ".join("n/a" if r["scores"].get(v) is None else f"{r['scores'][v]:.4f}" for v in summary["scores"])
            + " |"
        )
    return "\n".join(lines) + "\n"


__all__ = ["pareto_front", "parse_seeds", "summarize_sweep", "sweep_markdown"]
