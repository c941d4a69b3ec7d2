"""Tensor-backed dataset view and the weak-label collator.

For a 263-parameter model, per-row `datasets` access and per-row collation cost more than the forward pass.
:class:`ColumnarDataset` reads the Arrow columns into tensors once and serves whole batches through
``__getitems__`` (which the PyTorch DataLoader calls with all indices of a batch), so a batch is one index op.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import StructuredConfigError
from .color_datasets import PROB_PREFIX
from .tokenizer import SCOPE_PREFIX


class ColumnarDataset(Dataset):
    """A `datasets.Dataset` held as a dict of tensors; ``__getitems__`` returns one batched dict.

    Args:
        dataset: the source dataset (its numeric columns are converted once).
        columns: columns to keep (default: all).
    """

    def __init__(self, dataset: datasets.Dataset, columns: Sequence[str] | None = None):
        columns = list(columns or dataset.column_names)
        self.source = dataset
        self.columns: dict[str, torch.Tensor] = dict(dataset.with_format("torch", columns=columns)[:])
        self._length = len(dataset)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.columns.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        # A list of Python ints converts to an index tensor faster through NumPy than through torch.as_tensor.
        idx = (
            torch.from_numpy(np.asarray(indices, dtype=np.int64))
            if isinstance(indices, list)
            else torch.as_tensor(indices, dtype=torch.long)
        )
        return {k: v.index_select(0, idx) for k, v in self.columns.items()}

    @property
    def sample_weights(self) -> torch.Tensor | None:
        return self.columns.get("sample_weight")

    @property
    def label_names(self) -> list[str]:
        return [k[len(PROB_PREFIX) :] for k in self.columns if k.startswith(PROB_PREFIX)]


def as_columns(batch: Mapping[str, torch.Tensor] | Sequence[Mapping[str, Any]]) -> Mapping[str, torch.Tensor]:
    """A batch as columns: :class:`ColumnarDataset` already serves them; a list of rows (a plain ``Dataset``
    without ``__getitems__``) is stacked."""
    if isinstance(batch, Mapping):
        return batch
    return {k: torch.stack([torch.as_tensor(row[k]) for row in batch]) for k in batch[0]}


def label_probabilities(batch: Mapping[str, torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{name: float (B,) probabilities}`` from the ``prob_<name>`` columns, with a clear error for a missing one."""
    out = {}
    for name in names:
        key = PROB_PREFIX + name
        if key not in batch:
            raise StructuredConfigError("label", f"no column '{key}' for label '{name}'; have {sorted(batch)}")
        out[name] = batch[key].float()
    return out


class WeakLabelCollator:
    """Turns label probabilities into labels, fresh on every draw.

    Output: ``{"colors": (B, 3), "labels": (B, 3) target, "concept_labels": {name: (B,) float}}``.

    Args:
        label_names: labels to emit (each needs a ``prob_<name>`` column).
        sample: draw Bernoulli labels (training). ``False`` passes the probabilities through as (soft or exact)
            weights, which is what evaluation with exact 0/1 label columns needs.
        generator: RNG for the draws (``None``: torch's global RNG). :class:`AnchoredTrainer` does not rely on it:
            it draws the labels itself from a generator seeded by (seed, step), for each sample's position in the
            step's global batch, which is what makes a resumed run draw exactly the labels of an uninterrupted one
            and a multi-process or accumulated run those of one process with the whole batch (see
            ``AnchoredTrainer._draw_window_labels``).
    """

    def __init__(self, label_names: Sequence[str], sample: bool = True, generator: torch.Generator | None = None):
        self.label_names = list(label_names)
        self.sample = sample
        self.generator = generator

    def __call__(self, batch: Mapping[str, torch.Tensor] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = as_columns(batch)
        colors = batch["colors"].float()
        concept_labels = label_probabilities(batch, self.label_names)
        if self.sample:
            concept_labels = draw_labels(concept_labels, self.generator)
        return {"colors": colors, "labels": colors, "concept_labels": concept_labels}


class LMBlockCollator:
    """Batches of fixed-length language-model blocks (from :func:`structured_hf.data.tokenizer.tokenize_blocks`).

    Output: ``{"input_ids": (B, T), "labels": (B, T), "token_mask": (B, T) float, "concept_labels": {name: (B,)}}``
    with label *probabilities*; :class:`~structured_hf.training.AnchoredTrainer` draws the 0/1 labels per step.
    Blocks with ``scope_<name>`` columns (``data.token_scope``) add ``"token_scope": {name: (B, T) float}``: the
    trainer multiplies each drawn chunk label by it, so the label reaches only the tokens in scope.

    Blocks are right-padded only, so the causal mask alone already keeps padding out of every real token's context
    and the padded targets are -100: the model gets no ``attention_mask`` (its fast causal path). The padding mask
    travels as ``token_mask``, which the trainer pops and uses to keep padded positions out of the regularizers.

    Args:
        label_names: concepts whose ``prob_<name>`` column becomes a label.
        attention_mask: also pass ``attention_mask`` to the model (needed only for left padding).
    """

    def __init__(self, label_names: Sequence[str] = (), attention_mask: bool = False):
        self.label_names = list(label_names)
        self.attention_mask = attention_mask

    def __call__(self, batch: Mapping[str, torch.Tensor] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = as_columns(batch)
        for key in ("input_ids", "labels", "attention_mask"):
            if key not in batch:
                raise StructuredConfigError(
                    "data", f"language-model blocks need an '{key}' column (see tokenize_blocks); have {sorted(batch)}"
                )
        mask = batch["attention_mask"]
        out: dict[str, Any] = {
            "input_ids": batch["input_ids"].long(),
            "labels": batch["labels"].long(),
            "token_mask": mask.float(),
        }
        if self.attention_mask:
            out["attention_mask"] = mask.long()
        concept_labels = label_probabilities(batch, self.label_names)
        if concept_labels:
            out["concept_labels"] = concept_labels
        scopes = {n: batch[SCOPE_PREFIX + n].float() for n in self.label_names if SCOPE_PREFIX + n in batch}
        if scopes:
            out["token_scope"] = scopes
        return out


def scope_labels(concept_labels: dict[str, torch.Tensor], token_scope: Mapping[str, torch.Tensor] | None) -> None:
    """In place: each ``(B,)`` chunk label with a ``(B, T)`` scope becomes the ``(B, T)`` token label
    ``label · scope``; labels without a scope stay per chunk (every token of the chunk)."""
    for name, scope in (token_scope or {}).items():
        if name in concept_labels and concept_labels[name].ndim == 1:
            concept_labels[name] = concept_labels[name].unsqueeze(-1) * scope.to(concept_labels[name].device)


def draw_labels(
    probabilities: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Fresh Bernoulli labels from label probabilities. Idempotent on 0/1 inputs (exact labels stay exact)."""
    return {name: torch.bernoulli(p, generator=generator) for name, p in probabilities.items()}
