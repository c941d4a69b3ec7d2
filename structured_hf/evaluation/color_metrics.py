"""Metrics of a trained color model on exact inputs, in eval mode (the numbers `metrics.json` reports)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..concepts import ConceptMap, ConceptSpec
from ..data.colors import NAMED_COLORS, resolve_colors
from ..sites import site_activations  # site_activations lives in sites.py (visualization uses it)


@torch.no_grad()
def reconstruct(model: torch.nn.Module, colors: np.ndarray) -> np.ndarray:
    """Eval-mode reconstruction of RGB colors (N, 3)."""
    was_training = model.training
    model.eval()
    try:
        out = model(colors=torch.as_tensor(colors, dtype=torch.float32, device=model.device))
    finally:
        model.train(was_training)
    return out.reconstruction.cpu().numpy()


def named_color_mse(model: torch.nn.Module) -> dict[str, float]:
    """``{color name: MSE}`` over the 17 named test colors."""
    colors = np.asarray(list(NAMED_COLORS.values()))
    err = ((reconstruct(model, colors) - colors) ** 2).mean(-1)
    return {name: float(e) for name, e in zip(NAMED_COLORS, err)}


def concept_metrics(model: torch.nn.Module, concept: ConceptSpec) -> dict[str, Any]:
    """Where the concept's prototypes actually sit.

    Direction concepts: ``cosine`` of the (first) prototype's activation with the direction, plus ``cosine_min``
    over all prototypes. Axes concepts: ``leak_max``/``leak_mean``, the fraction of squared activation norm outside
    the concept's axes over its prototypes, and per-prototype leaks.
    """
    if not concept.prototypes:
        return {}
    colors = resolve_colors(concept.prototypes, f"concepts.{concept.name}.prototypes")
    acts = site_activations(model, colors, concept.site)
    if concept.direction is not None:
        v = concept.unit_direction().numpy()
        cos = acts @ v / np.maximum(np.linalg.norm(acts, axis=-1), 1e-12)
        return {"cosine": float(cos[0]), "cosine_min": float(cos.min())}
    mask = concept.axis_mask(acts.shape[-1]).numpy()
    sq = acts**2
    leak = sq[:, ~mask].sum(-1) / np.maximum(sq.sum(-1), 1e-12)
    names = [p if isinstance(p, str) else str(list(p)) for p in concept.prototypes]
    return {
        "leak_max": float(leak.max()),
        "leak_mean": float(leak.mean()),
        "leak": {n: float(x) for n, x in zip(names, leak)},
    }


def evaluate_color_model(model: torch.nn.Module) -> dict[str, Any]:
    """The metrics of `metrics.json`: named-color MSE and per-concept placement."""
    mse = named_color_mse(model)
    concepts = ConceptMap.of(model)
    return {
        "named_color_mse": mse,
        "named_color_mse_max": max(mse.values()),
        "named_color_mse_mean": float(np.mean(list(mse.values()))),
        "concepts": {c.name: concept_metrics(model, c) for c in concepts},
    }
