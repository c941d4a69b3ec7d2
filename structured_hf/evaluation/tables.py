"""Evaluation tables: per-named-color MSE (absolute and delta to the baseline) and r² scores, as JSON, Markdown and
LaTeX (booktabs)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.5f}" if signed else f"{x:.5f}"


def _columns(result: Mapping[str, Any], section: str) -> tuple[list[str], list[str]]:
    table = result[section]
    variants = list(table)
    colors = list(next(iter(table.values()))) if table else []
    return variants, colors


def markdown_table(result: Mapping[str, Any], section: str = "named_color_mse") -> str:
    """``section`` is ``named_color_mse`` (absolute) or ``named_color_delta`` (variant − baseline)."""
    variants, colors = _columns(result, section)
    signed = section == "named_color_delta"
    lines = ["| color | " + " | ".join(f"`{v}`" for v in variants) + " |", "|---|" + "---:|" * len(variants)]
    for c in colors:
        lines.append(f"| {c} | " + " | ".join(_fmt(result[section][v][c], signed) for v in variants) + " |")
    return "\n".join(lines)


def markdown_scores(result: Mapping[str, Any]) -> str:
    lines = ["| variant | score | r² | Pearson r |", "|---|---|---:|---:|"]
    for name, d in result.get("score_details", {}).items():
        target = f"sim(·, {d['anchor']})^{d['power']:g}" if d["kind"] == "similarity" else f"vibrancy^{d['power']:g}"
        lines.append(f"| `{name}` | MSE vs {target} | {_fmt(d['r2'])} | {_fmt(d['pearson_r'], True)} |")
    return "\n".join(lines)


def render_markdown(result: Mapping[str, Any], title: str = "Evaluation") -> str:
    parts = [f"# {title}", "", "## Per-color MSE", "", markdown_table(result, "named_color_mse")]
    if result.get("named_color_delta"):
        parts += ["", "## Change from baseline (variant − baseline)", "", markdown_table(result, "named_color_delta")]
    if result.get("score_details"):
        parts += ["", f"## Scores (RGB grid {result.get('grid_size')}³)", "", markdown_scores(result)]
    untouched = result.get("untouched") or {}
    if untouched:
        parts += ["", "## Colors with x·v <= 0 (must be unchanged)", ""]
        for name, u in untouched.items():
            parts.append(f"- `{name}`: {', '.join(u['colors']) or 'none'} — bit-identical: {u['bit_identical']}")
    return "\n".join(parts) + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def latex_table(result: Mapping[str, Any], section: str = "named_color_mse", caption: str = "") -> str:
    variants, colors = _columns(result, section)
    signed = section == "named_color_delta"
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "r" * len(variants) + "}",
        r"\toprule",
        "color & " + " & ".join(r"\texttt{" + latex_escape(v) + "}" for v in variants) + r" \\",
        r"\midrule",
    ]
    for c in colors:
        lines.append(
            latex_escape(c) + " & " + " & ".join(_fmt(result[section][v][c], signed) for v in variants) + r" \\"
        )
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + latex_escape(caption) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines)


def latex_scores(result: Mapping[str, Any]) -> str:
    lines = [r"\begin{tabular}{llrr}", r"\toprule", r"variant & target & $r^2$ & Pearson $r$ \\", r"\midrule"]
    for name, d in result.get("score_details", {}).items():
        target = (
            f"sim$^{{{d['power']:g}}}$ to {latex_escape(d['anchor'])}"
            if d["kind"] == "similarity"
            else f"vibrancy$^{{{d['power']:g}}}$"
        )
        lines.append(rf"\texttt{{{latex_escape(name)}}} & {target} & {_fmt(d['r2'])} & {_fmt(d['pearson_r'], True)} \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def render_latex(result: Mapping[str, Any]) -> str:
    parts = [latex_table(result, "named_color_mse", "Per-color reconstruction MSE")]
    if result.get("named_color_delta"):
        parts.append(latex_table(result, "named_color_delta", "Change in MSE from the baseline"))
    if result.get("score_details"):
        parts.append(latex_scores(result))
    return "\n\n".join(parts) + "\n"


def json_ready(value: Any) -> Any:
    """NaN is not JSON; write it as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def write_report(
    result: Mapping[str, Any], out_dir: str | Path, name: str = "evaluation", title: str = "Evaluation"
) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md`` and ``<name>.tex`` into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "markdown": out / f"{name}.md", "latex": out / f"{name}.tex"}
    paths["json"].write_text(json.dumps(json_ready(result), indent=2))
    paths["markdown"].write_text(render_markdown(result, title))
    paths["latex"].write_text(render_latex(result))
    return paths


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """``{min, mean, max, n}`` of the finite values (None when there are none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"min": None, "mean": None, "max": None, "n": 0}
    return {"min": min(finite), "mean": sum(finite) / len(finite), "max": max(finite), "n": len(finite)}


__all__ = [
    "json_ready",
    "latex_escape",
    "latex_scores",
    "latex_table",
    "markdown_scores",
    "markdown_table",
    "render_latex",
    "render_markdown",
    "summarize",
    "write_report",
]
