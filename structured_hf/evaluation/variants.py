"""Evaluate a color model and its variants (interventions, surgery) side by side.

A :class:`Variant` is a model plus the inference-time interventions active while it runs: the baseline is the model
alone, ``suppress:red`` is the model under a hook, ``prune:red`` is a new, narrower model. Every variant is scored on
the 17 named colors (per-color MSE, absolute and relative to the baseline) and on an RGB grid (r² scores;
docs/m2-control.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..concepts import ConceptMap, ConceptSpec
from ..data.colors import NAMED_COLORS, resolve_colors, rgb_grid
from ..errors import StructuredConfigError
from ..interventions import InterventionSpec, SurgerySpec, apply_surgery, bind, intervene, parse_spec
from ..sites import capture
from .color_metrics import reconstruct
from .similarity import hsv_similarity, r2_score, vibrancy

logger = logging.getLogger(__name__)

# Powers of the score (docs/m2-control.md): 2 for suppression, 3 for deletion;
# MSE vs vibrancy^2.3 when the whole hue plane goes.
SUPPRESSION_POWER = 2.0
DELETION_POWER = 3.0
VIBRANCY_POWER = 2.3


@dataclass(frozen=True)
class ScoreSpec:
    """What a variant's r² correlates its per-color MSE with.

    Args:
        kind: ``similarity`` (HSV similarity to ``anchor``) or ``vibrancy``.
        power: exponent applied to the similarity/vibrancy.
        anchor: anchor color (a named color or RGB triple), for ``similarity``.
    """

    kind: str
    power: float
    anchor: str | tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("similarity", "vibrancy"):
            raise StructuredConfigError("score.kind", f"expected 'similarity' or 'vibrancy', got {self.kind!r}")
        if self.kind == "similarity" and self.anchor is None:
            raise StructuredConfigError("score.anchor", "a similarity score needs an anchor color")

    def target(self, colors: np.ndarray) -> np.ndarray:
        return hsv_similarity(colors, self.anchor) if self.kind == "similarity" else vibrancy(colors)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "power": self.power}
        if self.anchor is not None:
            out["anchor"] = self.anchor if isinstance(self.anchor, str) else list(self.anchor)
        return out


@dataclass
class Variant:
    """A model and the interventions active while it runs.

    Args:
        name: the variant's label in tables (its spec string by default).
        model: the model to run (the baseline itself, or a new model from surgery).
        interventions: inference-time interventions entered, in order, around every forward pass.
        spec: the spec that made this variant (None for the baseline).
        score: what its r² is computed against (None: no score).
    """

    name: str
    model: nn.Module
    interventions: tuple[InterventionSpec, ...] = ()
    spec: InterventionSpec | SurgerySpec | None = None
    score: ScoreSpec | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def context(self):
        return intervene(self.model, list(self.interventions)) if self.interventions else nullcontext()

    def reconstruct(self, colors: np.ndarray) -> np.ndarray:
        with self.context():
            return reconstruct(self.model, colors)

    @torch.no_grad()
    def latents(self, colors: np.ndarray, site: str = "bottleneck") -> np.ndarray:
        """Activations of ``site`` as the decoder sees them (after this variant's interventions)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self.context(), capture(self.model, [site]) as acts:
                # Entered after the interventions, the capture hook runs after them and sees the rewritten value.
                self.model(colors=torch.as_tensor(colors, dtype=torch.float32, device=self.model.device))
        finally:
            self.model.train(was_training)
        return acts[site].reshape(len(colors), -1).cpu().numpy()


def anchor_color(concept: ConceptSpec) -> str | tuple[float, ...] | None:
    """The color a concept is about: its first prototype."""
    if not concept.prototypes:
        return None
    first = concept.prototypes[0]
    resolve_colors([first], f"concepts.{concept.name}.prototypes")  # validates
    return first if isinstance(first, str) else tuple(float(x) for x in first)


def default_score(
    model: nn.Module, spec: InterventionSpec | SurgerySpec, anchor: str | Sequence[float] | None = None
) -> ScoreSpec | None:
    """The reference's score for a spec: sim² for suppress/repel, sim³ for deletion, vibrancy^2.3 for axes concepts.

    ``anchor`` overrides the concept's first prototype (and is needed for explicit vectors/axes).
    """
    concept = None
    if spec.concept is not None:
        concept = ConceptMap.of(model)[spec.concept]
    is_axes = (concept is not None and concept.axes is not None) or (
        concept is None and spec.axes is not None and anchor is None
    )
    if is_axes:
        return ScoreSpec("vibrancy", VIBRANCY_POWER)
    anchor = anchor if anchor is not None else (anchor_color(concept) if concept is not None else None)
    if anchor is None:
        return None
    anchor = anchor if isinstance(anchor, str) else tuple(float(x) for x in anchor)
    power = SUPPRESSION_POWER if isinstance(spec, InterventionSpec) else DELETION_POWER
    return ScoreSpec("similarity", power, anchor)


def build_variants(
    model: nn.Module,
    specs: Iterable[str | InterventionSpec | SurgerySpec],
    anchor: str | Sequence[float] | None = None,
    retain_colors: np.ndarray | None = None,
    heal_kwargs: dict[str, Any] | None = None,
) -> list[Variant]:
    """The baseline followed by one variant per spec (interventions are checked against the model here)."""
    variants = [Variant("baseline", model)]
    names = {"baseline"}
    for raw in specs:
        spec = parse_spec(raw)
        name = spec.to_string()
        if name in names:
            raise StructuredConfigError("variants", f"'{name}' is listed twice")
        names.add(name)
        score = default_score(model, spec, anchor)
        if isinstance(spec, InterventionSpec):
            bind(model, spec)  # fail now, not in the middle of an evaluation
            variants.append(Variant(name, model, (spec,), spec, score))
        else:
            retain = None
            if spec.heal_steps:
                retain = retain_colors if retain_colors is not None else default_retain_colors(model, spec, anchor)
            new = apply_surgery(model, spec, retain_colors=retain, **(heal_kwargs or {}))
            variants.append(Variant(name, new, (), spec, score, {"surgery": list(new.config.surgery or [])}))
    return variants


def default_retain_colors(
    model: nn.Module,
    spec: InterventionSpec | SurgerySpec,
    anchor: str | Sequence[float] | None = None,
    grid_size: int = 8,
    max_similarity: float = 0.5,
) -> np.ndarray:
    """Colors a deletion must keep: the RGB grid minus the concept's neighbourhood.

    Similarity concepts: grid colors with HSV similarity to the anchor ``<= max_similarity``. Axes concepts (the hue
    plane): colors with vibrancy ``<= max_similarity``.
    """
    score = default_score(model, spec, anchor)
    if score is None:
        raise StructuredConfigError("heal", f"cannot tell which colors '{spec}' deletes; give an anchor color")
    grid = rgb_grid(grid_size)
    return grid[score.target(grid) <= max_similarity]


def _site_dot(model: nn.Module, bound_spec: InterventionSpec, colors: np.ndarray) -> np.ndarray | None:
    """``x·v`` at the spec's site for each color (None for axis interventions, which have no direction)."""
    b = bind(model, bound_spec)
    if b.direction is None:
        return None
    base = Variant("baseline", model)
    acts = base.latents(colors, b.site)
    return acts @ b.direction.numpy()


def evaluate_variants(variants: Sequence[Variant], grid_size: int = 10) -> dict[str, Any]:
    """Per-named-color MSE (absolute and delta to the first variant, the baseline), r² scores on an RGB grid, and
    for suppression/repulsion whether named colors with ``x·v <= 0`` reconstruct bit-identically.

    Returns a JSON-ready dict: ``named_color_mse``, ``named_color_delta``, ``scores``, ``score_details``,
    ``untouched`` and ``variants`` (spec and surgery record of each).
    """
    if not variants:
        raise StructuredConfigError("variants", "nothing to evaluate")
    named = np.asarray(list(NAMED_COLORS.values()))
    grid = rgb_grid(grid_size)
    baseline = variants[0]
    base_pred = baseline.reconstruct(named)
    base_err = ((base_pred - named) ** 2).mean(-1)
    result: dict[str, Any] = {
        "named_color_mse": {},
        "named_color_delta": {},
        "scores": {},
        "score_details": {},
        "untouched": {},
        "variants": {},
        "grid_size": grid_size,
    }
    for var in variants:
        pred = var.reconstruct(named)
        err = ((pred - named) ** 2).mean(-1)
        result["named_color_mse"][var.name] = {n: float(e) for n, e in zip(NAMED_COLORS, err)}
        if var is not baseline:
            result["named_color_delta"][var.name] = {n: float(e - b) for n, e, b in zip(NAMED_COLORS, err, base_err)}
        result["variants"][var.name] = {
            "spec": None if var.spec is None else var.spec.to_dict(),
            "bottleneck_dim": getattr(var.model.config, "bottleneck_dim", None),
            "concepts": [c["name"] for c in var.model.config.concepts or []],
            **var.info,
        }
        if var.score is not None:
            grid_err = ((var.reconstruct(grid) - grid) ** 2).mean(-1)
            details = r2_score(grid_err, var.score.target(grid), var.score.power)
            result["scores"][var.name] = details["r2"]
            result["score_details"][var.name] = {
                **var.score.to_dict(),
                **details,
                "grid_size": grid_size,
                "grid_mse_mean": float(grid_err.mean()),
            }
        if isinstance(var.spec, InterventionSpec) and var.spec.kind in ("suppress", "repel"):
            dot = _site_dot(var.model, var.spec, named)
            outside = dot <= 0
            result["untouched"][var.name] = {
                "colors": [n for n, o in zip(NAMED_COLORS, outside) if o],
                "bit_identical": bool(np.array_equal(pred[outside], base_pred[outside])),
            }
    return result


__all__ = [
    "DELETION_POWER",
    "SUPPRESSION_POWER",
    "ScoreSpec",
    "VIBRANCY_POWER",
    "Variant",
    "anchor_color",
    "build_variants",
    "default_retain_colors",
    "default_score",
    "evaluate_variants",
]
