"""The post-hoc baseline on any model: the steering-library method users know, for comparison with anchoring.

For a model that was never anchored, the concept's direction at a site is the **mean difference** of the residual
over the real tokens of weakly labelled concept chunks and of retain chunks (every concept's probability below 0.1),
the difference-of-means direction of steering libraries (e.g. repeng, steering-vectors). It is then either

- **suppressed** at inference time (``suppress`` with that vector: the hemisphere along it is removed at the site), or
- **projected out of every writer** of the residual stream up to the site (``project_out``: embeddings, attention
  output and MLP down projections get ``W ← (I − vvᵀ) W``), a permanent edit that leaves the stream orthogonal to
  ``v`` at the site for every input.

:func:`posthoc_evaluation` measures both on the held-out forget/retain sets with the same losses as the anchored
model's evaluation, so ``delta`` rows compare directly. ``scripts/posthoc.py`` is the command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn

from ..concepts import ConceptMap
from ..data.color_datasets import PROB_PREFIX
from ..errors import StructuredConfigError
from ..evaluation.language import (
    FORGET_THRESHOLD,
    RETAIN_THRESHOLD,
    evaluate_language_model,
    heldout_sets,
    mean_difference_direction,
)
from ..interventions.specs import InterventionSpec
from ..interventions.surgery import project_out
from .sites import set_concepts


def balanced_chunks(chunks: datasets.Dataset, concept: str, limit: int | None) -> datasets.Dataset:
    """The first ``limit`` forget chunks and the first ``limit`` retain chunks of ``chunks`` (all when None), so a
    short evaluation on a slow CPU still has both sets."""
    if limit is None:
        return chunks
    column = PROB_PREFIX + concept
    if column not in chunks.column_names:
        raise StructuredConfigError(
            "concept",
            f"no '{column}' column; the data has {[c for c in chunks.column_names if c.startswith(PROB_PREFIX)]}",
        )
    probs = np.stack(
        [np.asarray(chunks[c], dtype=np.float64) for c in chunks.column_names if c.startswith(PROB_PREFIX)]
    )
    own = np.asarray(chunks[column], dtype=np.float64)
    forget = np.flatnonzero(own >= FORGET_THRESHOLD)[:limit]
    retain = np.flatnonzero(np.all(probs < RETAIN_THRESHOLD, axis=0))[:limit]
    return chunks.select(sorted(np.concatenate([forget, retain]).tolist()))


def posthoc_direction(
    model: nn.Module,
    tokenizer: Any,
    train_chunks: datasets.Dataset,
    concept: str,
    site: str,
    max_chunks: int = 256,
    batch_size: int = 16,
) -> torch.Tensor:
    """Unit mean-difference direction at ``site`` from the first ``max_chunks`` forget and retain training chunks."""
    sets = heldout_sets(train_chunks, [concept])
    return mean_difference_direction(
        model, tokenizer, sets[f"forget:{concept}"][:max_chunks], sets["retain"][:max_chunks], site, batch_size
    )


def posthoc_concept(model: nn.Module, concept: str, site: str, direction: torch.Tensor) -> None:
    """Record the post-hoc direction as a concept of the model's map (so ``suppress(model, concept)`` works and the
    map travels with a saved copy)."""
    others = [c.to_dict() for c in ConceptMap.of(model) if c.name != concept]
    set_concepts(
        model,
        others
        + [
            {
                "name": concept,
                "site": site,
                "direction": direction.tolist(),
                "description": "post-hoc mean-difference direction (never anchored)",
            }
        ],
    )


def posthoc_variants(
    model: nn.Module, concept: str, site: str, direction: torch.Tensor
) -> list[tuple[str, nn.Module, Sequence[Any]]]:
    """``baseline``, ``suppress:<c>`` (the direction at inference time) and ``project:<c>`` (out of every writer)."""
    vector = tuple(float(x) for x in direction)
    return [
        ("baseline", model, []),
        (f"suppress:{concept}", model, [InterventionSpec("suppress", site=site, vector=vector)]),
        (f"project:{concept}", project_out(model, direction, site=site, name=f"{concept} (mean difference)"), []),
    ]


def posthoc_evaluation(
    model: nn.Module,
    tokenizer: Any,
    chunks: datasets.DatasetDict,
    concept: str,
    site: str,
    direction_chunks: int = 256,
    eval_chunks: int | None = None,
    batch_size: int = 16,
    prompts: Sequence[str] = (),
) -> dict[str, Any]:
    """Find the direction on the training split, then forget/retain losses of baseline / suppress / project on the
    test split (``eval_chunks`` forget and retain chunks each; all when None). The model gets the direction as the
    concept ``concept`` of its map."""
    direction = posthoc_direction(model, tokenizer, chunks["train"], concept, site, direction_chunks, batch_size)
    posthoc_concept(model, concept, site, direction)
    test = balanced_chunks(chunks["test"], concept, eval_chunks)
    report = evaluate_language_model(
        model,
        tokenizer,
        test,
        concepts=[concept],
        batch_size=batch_size,
        variants=posthoc_variants(model, concept, site, direction),
        prompts=prompts,
    )
    report["direction"] = {
        "concept": concept,
        "site": site,
        "vector": direction.tolist(),
        "chunks_per_set": direction_chunks,
    }
    return report


__all__ = ["balanced_chunks", "posthoc_concept", "posthoc_direction", "posthoc_evaluation", "posthoc_variants"]
