"""Evaluation of the color-operation transformer: per-operation error, split by how much the example involves red,
and where the red concept sits in the residual stream."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch

from ..concepts import ConceptMap
from ..data.labels import redness
from ..sites import capture

# An example "involves red" when an operand or the result is at least this red; it is "far from red" below the
# second threshold (redness = r(1 − g/2 − b/2): 1 for pure red, 0.5 for orange or magenta).
RED_INVOLVED = 0.6
RED_FAR = 0.2


def task_arrays(dataset: datasets.Dataset) -> dict[str, torch.Tensor]:
    return dict(dataset.with_format("torch", columns=["op", "colors", "operand_mask", "target"])[:])


def example_redness(arrays: Mapping[str, torch.Tensor]) -> np.ndarray:
    """max(redness of present operands, redness of the result) per example."""
    colors = arrays["colors"].numpy().astype(np.float64)
    mask = arrays["operand_mask"].numpy()
    parts = [redness(colors[:, k]) * mask[:, k] for k in range(2)] + [
        redness(arrays["target"].numpy().astype(np.float64))
    ]
    return np.max(np.stack(parts, -1), -1)


@torch.no_grad()
def predict(model: torch.nn.Module, arrays: Mapping[str, torch.Tensor], batch_size: int = 4096) -> np.ndarray:
    was_training = model.training
    model.eval()
    try:
        out = [
            model(
                op_ids=arrays["op"][i : i + batch_size],
                colors=arrays["colors"][i : i + batch_size],
                operand_mask=arrays["operand_mask"][i : i + batch_size],
            ).prediction
            for i in range(0, len(arrays["op"]), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


def per_operation_errors(
    model: torch.nn.Module, dataset: datasets.Dataset, operations: Sequence[str]
) -> dict[str, Any]:
    """``{op: {"all": mse, "red": mse on red-involving examples, "far": mse far from red, "n_red": k}}``."""
    arrays = task_arrays(dataset)
    err = ((predict(model, arrays) - arrays["target"].numpy()) ** 2).mean(-1)
    red = example_redness(arrays)
    ops = arrays["op"].numpy()
    out: dict[str, Any] = {}
    for i, op in enumerate(operations):
        sel = ops == i
        involved, far = sel & (red >= RED_INVOLVED), sel & (red < RED_FAR)
        out[op] = {
            "all": float(err[sel].mean()) if sel.any() else float("nan"),
            "red": float(err[involved].mean()) if involved.any() else float("nan"),
            "far": float(err[far].mean()) if far.any() else float("nan"),
            "n": int(sel.sum()),
            "n_red": int(involved.sum()),
            "n_far": int(far.sum()),
        }
    return out


@torch.no_grad()
def concept_placement(
    model: torch.nn.Module, dataset: datasets.Dataset, sites: Sequence[str] | None = None, limit: int = 2048
) -> dict[str, Any]:
    """For each direction concept: at every residual site (anchored or not) and at its own site, the mean cosine with
    the concept's direction over all tokens of red-involving examples, and the mean squared share along it for
    far-from-red ones.
    """
    arrays = {k: v[:limit] for k, v in task_arrays(dataset).items()}
    red = example_redness(arrays)
    involved, far = red >= RED_INVOLVED, red < RED_FAR
    concepts = [c for c in ConceptMap.of(model) if c.direction is not None]
    sites = list(sites or [f"layers.{i}.residual_post" for i in range(model.config.num_layers)])
    own = [c.site for c in concepts if c.site not in sites]  # e.g. a concept anchored in QK space
    was_training = model.training
    model.eval()
    try:
        with capture(model, sites + sorted(set(own))) as acts:
            model(op_ids=arrays["op"], colors=arrays["colors"], operand_mask=arrays["operand_mask"])
    finally:
        model.train(was_training)
    out: dict[str, Any] = {}
    for c in concepts:
        v = c.unit_direction()
        per_site = {}
        for site in sites + ([c.site] if c.site not in sites else []):
            x = acts[site]  # (N, T, D)
            cos = (x @ v) / x.norm(dim=-1).clamp_min(1e-12)  # (N, T)
            share = (x @ v).square() / x.square().sum(-1).clamp_min(1e-12)
            per_site[site] = {
                "cosine_red": float(cos[torch.as_tensor(involved)].mean()) if involved.any() else float("nan"),
                "share_far": float(share[torch.as_tensor(far)].mean()) if far.any() else float("nan"),
                "anchored": site == c.site,
            }
        out[c.name] = per_site
    return out
