"""The one reduction every regularizer goes through.

Selective regularization: a term with a label weights each sample by its label ``w_i`` (0/1 from a
fresh Bernoulli draw, or soft) and takes ``Σ w_i ℓ_i / Σ w_i``: the mean over labelled samples, and exactly 0 (not
NaN) when nothing in the batch is labelled. A term without a label is the plain mean (``w_i = 1``).

``denominator`` lets the trainer normalise by the label total of the whole gradient-accumulation window (and of all
processes), so that 4 micro-batches of 16 give the same update as one batch of 64.
"""

from __future__ import annotations

import torch


def selective_sum(per_sample: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ w_i ℓ_i`` (``Σ ℓ_i`` without weights). Shape ``()``."""
    if weights is None:
        return per_sample.sum()
    return (per_sample * weights.to(per_sample.dtype)).sum()


def selective_mean(
    per_sample: torch.Tensor,
    weights: torch.Tensor | None = None,
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """``Σ w_i ℓ_i / Σ w_i``, 0 when ``Σ w_i = 0``.

    Args:
        per_sample: ``(N,)`` per-sample losses.
        weights: ``(N,)`` label weights, or ``None`` for a plain mean.
        denominator: the normaliser to use instead of this batch's ``Σ w_i`` (e.g. the window total).
    """
    total = selective_sum(per_sample, weights)
    if (
        isinstance(denominator, (int, float))
        and denominator > 0
        and total.device.type == "cpu"
        and total.dtype in (torch.float32, torch.float64)
    ):
        # Fast path for the trainer's window totals (a positive Python number): the same division as the general
        # path below (for float32/64 CPU divides by a scalar, it does not multiply by its reciprocal as it does for
        # half types and on GPU), without the tensor constructions and where() calls.
        return total / float(denominator)
    if denominator is None:
        denominator = per_sample.new_tensor(float(per_sample.numel())) if weights is None else weights.sum()
    denominator = torch.as_tensor(denominator, dtype=total.dtype, device=total.device)
    # where() rather than (Σw + ε): no labelled sample gives exactly 0 with a zero gradient, and one labelled
    # sample gives exactly its own loss.
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, total / safe, torch.zeros_like(total))
