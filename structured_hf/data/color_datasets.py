"""Builders of color `datasets.Dataset`s with label-probability columns.

Columns: ``colors`` (3 floats), ``prob_<label>`` for each labeler (the Bernoulli probability the collator draws
from), and ``sample_weight`` where distinct colors must be equally likely (HSV grids).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np

from ..errors import StructuredConfigError
from ..validation import check_keys, check_number
from .colors import NAMED_COLORS, hsv_grid, hsv_sampling_weights, resolve_colors, rgb_grid, to_rgb
from .labels import ColorLabeler

PROB_PREFIX = "prob_"
_GRID_KEYS = {"grid", "size", "hues", "saturations", "values", "colors", "include_named"}


def build_color_dataset(
    colors: np.ndarray,
    labelers: Mapping[str, ColorLabeler] | None = None,
    sample_weights: np.ndarray | None = None,
    exact_labels: Mapping[str, np.ndarray] | None = None,
) -> datasets.Dataset:
    """Colors (N, 3) -> Dataset with ``colors``, ``prob_<label>`` and optionally ``sample_weight``.

    Args:
        colors: RGB in [0, 1].
        labelers: label name -> weak labeler giving each color's label probability.
        sample_weights: per-color sampling weight (normalised by the sampler).
        exact_labels: label name -> RGB prototypes; the color gets probability 1 if it is one of them, else 0
            (evaluation uses exact labels, e.g. red only for (1, 0, 0)). Overrides the labeler of that name.
    """
    colors = np.asarray(colors, dtype=np.float32).reshape(-1, 3)
    data: dict[str, Any] = {"colors": colors}
    for name, labeler in (labelers or {}).items():
        data[PROB_PREFIX + name] = labeler(colors.astype(np.float64)).astype(np.float32)
    for name, prototypes in (exact_labels or {}).items():
        hits = np.isclose(colors[:, None, :], np.asarray(prototypes, dtype=np.float32)[None], atol=1e-6).all(-1)
        data[PROB_PREFIX + name] = hits.any(-1).astype(np.float32)
    if sample_weights is not None:
        data["sample_weight"] = np.asarray(sample_weights, dtype=np.float32)
    features = datasets.Features(
        {
            "colors": datasets.List(datasets.Value("float32"), length=3),
            **{k: datasets.Value("float32") for k in data if k != "colors"},
        }
    )
    return datasets.Dataset.from_dict({k: v.tolist() for k, v in data.items()}, features=features)


def check_color_spec(spec: Any, field: str = "data.train") -> tuple[str, tuple]:
    """Validate a data spec without building it (a recipe is checked when loaded; its data is built later).

    Returns ``(grid, arguments)``: ``("rgb", (size,))``, ``("hsv", (hues, saturations, values))``, ``("named", ())``
    or ``("colors", (rgb array,))``.
    """
    if not isinstance(spec, Mapping):
        raise StructuredConfigError(field, f"expected a mapping such as {{grid: rgb, size: 8}}, got {spec!r}")
    check_keys(field, spec, _GRID_KEYS)
    grid = spec.get("grid", "colors" if "colors" in spec else None)
    if grid == "rgb":
        return grid, (_positive_int(spec.get("size", 8), f"{field}.size", low=2, high=_MAX_AXIS),)
    if grid == "hsv":
        return grid, tuple(
            _positive_int(spec.get(key, default), f"{field}.{key}", high=_MAX_AXIS)
            for key, default in (("hues", 36), ("saturations", 10), ("values", 10))
        )
    if grid == "named":
        return grid, ()
    if grid == "colors":
        listed = spec.get("colors")
        if not isinstance(listed, Sequence) or isinstance(listed, str) or not listed:
            raise StructuredConfigError(f"{field}.colors", f"expected a non-empty list of colors, got {listed!r}")
        return grid, (resolve_colors(listed, f"{field}.colors"),)
    raise StructuredConfigError(f"{field}.grid", f"expected one of rgb, hsv, named, colors; got {grid!r}")


def colors_from_spec(spec: Mapping[str, Any], field: str = "data.train") -> tuple[np.ndarray, np.ndarray | None]:
    """A data spec from a recipe -> (RGB colors, sampling weights or None).

    Specs: ``{grid: rgb, size: 8}``; ``{grid: hsv, hues: 36, saturations: 10, values: 10}``;
    ``{colors: [red, [0.5, 0.5, 0.5], ...]}``; ``{grid: named}`` (the 17 test colors).
    ``include_named: true`` appends the 17 named colors.
    """
    grid, arguments = check_color_spec(spec, field)
    weights = None
    if grid == "rgb":
        colors = rgb_grid(*arguments)
    elif grid == "hsv":
        n_h, n_s, n_v = arguments
        hsv = hsv_grid(n_h, n_s, n_v)
        colors, weights = to_rgb(hsv), hsv_sampling_weights(hsv, n_h, n_s)
    elif grid == "named":
        colors = np.asarray(list(NAMED_COLORS.values()))
    else:
        colors = arguments[0]
    if spec.get("include_named", False):
        named = np.asarray(list(NAMED_COLORS.values()))
        colors = np.concatenate([colors, named])
        if weights is not None:
            # Named colors count like one typical distinct color each.
            weights = np.concatenate([weights, np.full(len(named), weights.mean())])
            weights = weights / weights.sum()
    return colors, weights


# Points per grid axis: 256³ (16.7M colors, 400 MB) is already far beyond the 8-bit color resolution; a larger value
# is a typo that would try to allocate tens of GB before the first step.
_MAX_AXIS = 256


def _positive_int(value: Any, field: str, low: int = 1, high: int | None = None) -> int:
    check_number(field, value, low=1, integer=True)
    if value < low:
        raise StructuredConfigError(field, f"needs {field.rsplit('.', 1)[-1]} >= {low}, got {value}")
    if high is not None and value > high:
        raise StructuredConfigError(field, f"expected an integer <= {high}, got {value}")
    return value
