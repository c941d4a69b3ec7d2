"""Weak labels drawn per optimizer step: fresh Bernoulli labels from each sample's label probability.

Pure functions of (seed, step, position in the step's global batch), so that a resumed run, a multi-process run and
a gradient-accumulating run give every sample the labels of one uninterrupted single-process run
(tests/test_reliability.py checks all three).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import StructuredConfigError


def label_generator(seed: int, step: int) -> torch.Generator:
    """RNG for the weak labels of one optimizer step, a pure function of (seed, step).

    Labels are not drawn from torch's global RNG: Trainer collates the first batch after a resume *before* it
    restores the global RNG state, and accelerate prefetches batches, so global-RNG draws would shift by one
    batch on resume. Seeding from the step makes resumed and uninterrupted runs draw identical labels.
    """
    key = (seed * 1_000_003 + step) * 4099
    return torch.Generator().manual_seed(key % (2**63 - 1))


def draw_window_labels(
    batches: Sequence[dict[str, Any]], generator: torch.Generator, world: int, rank: int, batch_size: int
) -> None:
    """Replace the label probabilities of every micro-batch of the window by fresh Bernoulli labels, in place.

    The draws are made for the positions of the samples in the step's *global* batch, so that one process with
    batch 64, two processes with batch 32 and one process accumulating 4 x 16 give every sample the same label.
    Accelerate deals the micro-batches of ``b`` samples round-robin over the ``P`` processes, so micro-batch
    ``k`` of process ``p`` holds positions ``(k·P + p)·b`` onwards. One generator per step draws, label after
    label (sorted by name), one uniform per position of the whole window (``torch.bernoulli`` consumes exactly one
    per element, whatever its probability); every process draws all ``b·K·P`` positions, with the other
    processes' probabilities at 0, so that its generator is at the same place for the next label, and keeps its
    own slices. Labels are drawn on the CPU, with a CPU generator, and moved to the batch's device.
    """
    labelled = [(k, b["concept_labels"]) for k, b in enumerate(batches) if "concept_labels" in b]
    if not labelled:
        return
    if world == 1 and len(batches) == 1:  # one process, no accumulation: the positions are the batch itself
        labels = labelled[0][1]
        for name in sorted(labels):  # the collator's order: sorted label names
            p = labels[name]
            labels[name] = (
                torch.bernoulli(p, generator=generator)
                if p.device.type == "cpu"
                else torch.bernoulli(p.cpu(), generator=generator).to(p.device)
            )
        return
    offsets = [(k * world + rank) * batch_size for k, _ in labelled]
    for name in sorted(labelled[0][1]):
        probs = [labels[name] for _, labels in labelled]
        length = max([batch_size * len(batches) * world] + [o + p.shape[0] for o, p in zip(offsets, probs)])
        padded = torch.zeros(length, dtype=probs[0].dtype)
        for offset, p in zip(offsets, probs):
            padded[offset : offset + p.shape[0]] = p.cpu()
        drawn = torch.bernoulli(padded, generator=generator)
        for offset, p, (_, labels) in zip(offsets, probs, labelled):
            labels[name] = drawn[offset : offset + p.shape[0]].to(p.device)


def batch_size_of(batch: Mapping[str, Any]) -> int:
    """The leading size of the batch's first tensor."""
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    raise StructuredConfigError("batch", "contains no tensor to take a batch size from")


def window_counts(batches: Sequence[Mapping[str, Any]], label_names: Sequence[str]) -> list[float]:
    """``[samples, Σ label_1, Σ label_2, ...]`` over the micro-batches of one accumulation window (this process)."""
    counts = [0.0] * (len(label_names) + 1)
    for batch in batches:
        counts[0] += batch_size_of(batch)
        for i, name in enumerate(label_names, start=1):
            counts[i] += float(batch["concept_labels"][name].sum())
    return counts
