"""Color-operation tasks for the color transformer (M3).

Every example is an operation token and up to two operand colors; the target is the result color (RGB in [0, 1]):

| op | operands | result |
|---|---|---|
| ``mix`` | a, b | the mean of a and b in *linear* RGB (sRGB decoded, averaged, encoded): how light mixes |
| ``complement`` | a | hue + 180° at the same saturation and value (HSV) |
| ``rotate`` | a | hue + 120° at the same saturation and value (HSV) |
| ``lighten`` | a | halfway to white in linear RGB |

Unary operations leave the second operand slot empty (a zero color flagged by ``operand_mask``).
Splits hold out operand *combinations*: a (op, a, b) triple in the test split never appears in training, and for
``mix`` the unordered pair {a, b} is held out as a whole.
Weak labels: ``p(red) = clip(scale · max(redness of operands and result)^power)``, drawn fresh every step like the
color labels of M1/M2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch

from ..errors import StructuredConfigError
from .collators import as_columns, label_probabilities
from .color_datasets import PROB_PREFIX
from .colors import rgb_grid, to_hsv, to_rgb
from .labels import feature_function

OPERATIONS: tuple[str, ...] = ("mix", "complement", "rotate", "lighten")
ARITY = {"mix": 2, "complement": 1, "rotate": 1, "lighten": 1}


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 sRGB decoding."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1 / 2.4) - 0.055)


def _rotate_hue(a: np.ndarray, degrees: float) -> np.ndarray:
    hsv = to_hsv(a)
    hsv[:, 0] = (hsv[:, 0] + degrees / 360.0) % 1.0
    return to_rgb(hsv)


def apply_operation(op: str, a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """The result color of ``op`` on operand arrays (N, 3)."""
    if op == "mix":
        if b is None:
            raise StructuredConfigError("op", "mix needs two operands")
        return linear_to_srgb((srgb_to_linear(a) + srgb_to_linear(b)) / 2.0)
    if op == "complement":
        return _rotate_hue(a, 180.0)
    if op == "rotate":
        return _rotate_hue(a, 120.0)
    if op == "lighten":
        return linear_to_srgb((srgb_to_linear(a) + 1.0) / 2.0)
    raise StructuredConfigError("op", f"unknown operation {op!r}; known: {list(OPERATIONS)}")


def build_color_task_splits(
    operations: Sequence[str] = OPERATIONS,
    grid_size: int = 10,
    pair_grid_size: int = 6,
    test_fraction: float = 0.15,
    validation_fraction: float = 0.1,
    labelers: Mapping[str, Mapping[str, float]] | None = None,
    seed: int = 0,
) -> datasets.DatasetDict:
    """All operand combinations, split into train/validation/test by combination.

    Unary operations use every color of a ``grid_size``³ RGB grid; ``mix`` uses every unordered pair of a
    ``pair_grid_size``³ grid (both orders). ``sample_weight`` makes each operation equally likely in training.

    Columns: ``op`` (index into ``operations``), ``colors`` (2×3 operands), ``operand_mask`` (2), ``target`` (3),
    ``sample_weight``, ``prob_<label>`` for each labeler (``{feature, scale, power}`` as in :mod:`structured_hf.data.labels`, applied to
    the max over operands and result).
    """
    unknown = [op for op in operations if op not in OPERATIONS]
    if unknown:
        raise StructuredConfigError("data.operations", f"unknown operations {unknown}; known: {list(OPERATIONS)}")
    if not 0 < test_fraction < 1 or not 0 <= validation_fraction < 1 or test_fraction + validation_fraction >= 1:
        raise StructuredConfigError("data.test_fraction", "fractions must be in (0, 1) and sum to less than 1")
    palette, pair_palette = rgb_grid(grid_size), rgb_grid(pair_grid_size)
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"op": [], "colors": [], "operand_mask": [], "target": [], "split": []}
    for op_index, op in enumerate(operations):
        if ARITY[op] == 2:
            i, j = np.triu_indices(len(pair_palette))
            a, b = pair_palette[i], pair_palette[j]
            result = apply_operation(op, a, b)
            # Both orders of a pair share one split, so "held out" really means unseen.
            split = _assign_splits(len(a), rng, test_fraction, validation_fraction)
            a, b, result, split = (
                np.concatenate([x, y]) for x, y in ((a, b), (b, a), (result, result), (split, split))
            )
            mask = np.ones((len(a), 2))
        else:
            a = palette
            b = np.zeros_like(a)
            result = apply_operation(op, a)
            split = _assign_splits(len(a), rng, test_fraction, validation_fraction)
            mask = np.tile([1.0, 0.0], (len(a), 1))
        rows["op"].extend([op_index] * len(a))
        rows["colors"].extend(np.stack([a, b], 1).astype(np.float32).tolist())
        rows["operand_mask"].extend(mask.astype(np.float32).tolist())
        rows["target"].extend(result.astype(np.float32).tolist())
        rows["split"].extend(split.tolist())
    colors = np.asarray(rows["colors"], dtype=np.float64)
    target = np.asarray(rows["target"], dtype=np.float64)
    mask = np.asarray(rows["operand_mask"])
    for name, spec in (labelers or {}).items():
        feature = feature_function(
            spec.get("feature", {"red": "redness"}.get(name, name)), f"data.labels.{name}.feature"
        )
        per_operand = np.stack([feature(colors[:, k]) * mask[:, k] for k in range(2)] + [feature(target)], -1)
        p = np.clip(float(spec.get("scale", 1.0)) * per_operand.max(-1) ** float(spec.get("power", 1.0)), 0.0, 1.0)
        rows[PROB_PREFIX + name] = p.astype(np.float32).tolist()
    split = np.asarray(rows.pop("split"))
    ops = np.asarray(rows["op"])
    # Each operation equally likely per draw, whatever its number of combinations (mix has ~50x more).
    counts = np.bincount(ops[split == 0], minlength=len(operations)).astype(np.float64)
    rows["sample_weight"] = (1.0 / np.maximum(counts[ops], 1.0)).astype(np.float32).tolist()
    features = datasets.Features(
        {
            "op": datasets.Value("int64"),
            "colors": datasets.List(datasets.List(datasets.Value("float32"), length=3), length=2),
            "operand_mask": datasets.List(datasets.Value("float32"), length=2),
            "target": datasets.List(datasets.Value("float32"), length=3),
            "sample_weight": datasets.Value("float32"),
            **{k: datasets.Value("float32") for k in rows if k.startswith(PROB_PREFIX)},
        }
    )
    full = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(
        {name: full.select(np.flatnonzero(split == k)) for k, name in enumerate(("train", "validation", "test"))}
    )


def _assign_splits(n: int, rng: np.random.Generator, test_fraction: float, validation_fraction: float) -> np.ndarray:
    """0 = train, 1 = validation, 2 = test, as a random assignment of ``n`` combinations."""
    u = rng.random(n)
    return np.where(u < test_fraction, 2, np.where(u < test_fraction + validation_fraction, 1, 0))


class ColorTaskCollator:
    """Batches of color-task rows -> model inputs; label probabilities pass through (the trainer draws labels).

    Output: ``{"op_ids": (B,), "colors": (B, 2, 3), "operand_mask": (B, 2), "labels": (B, 3),
    "concept_labels": {name: (B,)}}``.
    """

    def __init__(self, label_names: Sequence[str] = ()):
        self.label_names = list(label_names)

    def __call__(self, batch: Mapping[str, torch.Tensor] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = as_columns(batch)
        concept_labels = label_probabilities(batch, self.label_names)
        return {
            "op_ids": batch["op"].long(),
            "colors": batch["colors"].float(),
            "operand_mask": batch["operand_mask"].float(),
            "labels": batch["target"].float(),
            "concept_labels": concept_labels,
        }
