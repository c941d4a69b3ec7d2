"""Sampling with replacement that is reproducible per epoch (and therefore across resumes)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochWeightedSampler(Sampler[int]):
    """Draws ``num_samples`` indices with replacement, with probabilities ``∝ weights``.

    The generator is re-seeded from ``seed + epoch`` at every :meth:`set_epoch` (Trainer calls it at each epoch
    start), so a run resumed from a checkpoint replays exactly the indices the uninterrupted run drew.

    Args:
        weights: per-item weights (uniform when ``None``).
        num_items: dataset length (when ``weights`` is ``None``).
        num_samples: indices per epoch.
        seed: base seed.
    """

    def __init__(self, weights: torch.Tensor | None, num_items: int, num_samples: int, seed: int = 0):
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.num_items = num_items
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def indices(self) -> torch.Tensor:
        """This epoch's ``(num_samples,)`` indices as one tensor (what :meth:`__iter__` yields one by one)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is None:
            return torch.randint(self.num_items, (self.num_samples,), generator=g)
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())
