"""One call that evaluates a model and its variants and writes everything: what `scripts/evaluate.py` runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..concepts import ConceptMap
from ..data.colors import HUE_NAMES, NAMED_COLORS, rgb_grid
from ..interventions import save_specs
from ..visualization import plot_error_vs_similarity, plot_swatch_grid, plot_variants_latents
from .tables import write_report
from .variants import Variant, build_variants, evaluate_variants

logger = logging.getLogger(__name__)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def draw_figures(variants: Sequence[Variant], result: dict[str, Any], out_dir: Path) -> list[Path]:
    """``swatches.png``, ``error_vs_similarity.png`` and ``latents.png`` (one row per variant)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    named = np.asarray(list(NAMED_COLORS.values()))
    paths = [
        plot_swatch_grid(
            list(NAMED_COLORS),
            named,
            {v.name: v.reconstruct(named) for v in variants},
            out_dir / "swatches.png",
            title="true vs reconstructed (MSE in each cell)",
        )
    ]
    grid = rgb_grid(result["grid_size"])
    panels = []
    for v in variants[1:]:
        if v.score is None:
            continue
        err = ((v.reconstruct(grid) - grid) ** 2).mean(-1)
        target = v.score.target(grid) ** v.score.power
        label = (
            f"sim(·, {v.score.anchor})^{v.score.power:g}"
            if v.score.kind == "similarity"
            else f"vibrancy^{v.score.power:g}"
        )
        panels.append({"name": v.name, "x": target, "mse": err, "xlabel": label, "r2": result["scores"].get(v.name)})
    if panels:
        paths.append(
            plot_error_vs_similarity(
                grid, panels, out_dir / "error_vs_similarity.png", title="per-color error vs closeness to the concept"
            )
        )
    hues = np.asarray([NAMED_COLORS[n] for n in HUE_NAMES])
    colors = np.concatenate([rgb_grid(8), hues])
    rows = [
        {"name": v.name, "latents": v.latents(colors, "bottleneck"), "concepts": ConceptMap.of(v.model)}
        for v in variants
    ]
    paths.append(
        plot_variants_latents(
            rows,
            colors,
            out_dir / "latents.png",
            highlight_names=HUE_NAMES,
            title="latents at 'bottleneck' as the decoder sees them",
        )
    )
    return paths


def evaluate_model(
    model: nn.Module,
    specs: Sequence[Any],
    output_dir: str | Path | None = None,
    grid_size: int = 10,
    anchor: str | Sequence[float] | None = None,
    figures: bool = True,
    heal_kwargs: dict[str, Any] | None = None,
    title: str = "Evaluation",
    save_variants: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` and one variant per spec; with ``output_dir``, write ``evaluation.json`` (+ ``.md``,
    ``.tex``) and the figures there (and, with ``save_variants``, every surgery variant as a loadable model under
    ``models/<variant>``). Returns the result dict."""
    start = time.perf_counter()
    variants = build_variants(model, specs, anchor=anchor, heal_kwargs=heal_kwargs)
    result = evaluate_variants(variants, grid_size=grid_size)
    result["model"] = {
        "bottleneck_dim": getattr(model.config, "bottleneck_dim", None),
        "concepts": list(model.config.concepts or []),
    }
    result["runtime_s"] = time.perf_counter() - start
    if output_dir is not None:
        out = Path(output_dir)
        write_report(result, out, title=title)
        save_specs(specs, out)  # the evaluated interventions, replayable with load_specs
        if save_variants:
            for v in variants[1:]:
                if v.model is not model:
                    v.model.save_pretrained(out / "models" / _slug(v.name))
        if figures:
            result["figures"] = [p.name for p in draw_figures(variants, result, out)]
            write_report(result, out, title=title)
        logger.info("wrote %s", out / "evaluation.json")
    return result


__all__ = ["draw_figures", "evaluate_model"]
