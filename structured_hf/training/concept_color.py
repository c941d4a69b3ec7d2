"""Recipes parameterised by the concept's color: ``concept_color: X`` and colors written relative to X's hue.

A recipe that anchors, suppresses or deletes one color needs colors in several places: the concept's prototypes,
the labels of the concept and of its neighbours (their features and exact evaluation labels), a deletion target.
Written relative to the concept, one recipe serves every color::

    concept_color: red                      # or orange, teal, [1.0, 0.4, 0.0], ... (--set concept_color=X)
    model: {concepts: [{name: concept, direction: [...], prototypes: [concept]}]}
    data:
      labels:
        concept: {feature: {hue_of: concept}, scale: 3.0e-1, power: 8.0}
        near-a: {feature: {hue_of: concept+60}, ...}     # the hue 60° on one side
        complement: {feature: {hue_of: concept+180}, ...}
      eval_labels: {concept: [concept], near-a: [concept+60]}

``concept`` is X itself; ``concept+D`` / ``concept-D`` is the fully saturated, full-value color whose hue is D degrees
from X's (a named hue where it lands on one, else an RGB triple). The same tokens also stand for *names*: of the
concept in the concept map, of labels (``data.labels`` and ``data.eval_labels`` keys) and in the regularizers' and
routes' ``concept``/``label`` references, where they become the color's name (``red``, ``yellow``; ``hue24`` for an
unnamed hue). Label names matter beyond display: the trainer draws labels in sorted name order, so the recipe with
X = red draws exactly the labels of the red recipe. Cones and axes are already written relative to the concept's
direction, so nothing else changes with X. ``{hue_of: C}`` is the hue's own feature (the channel formula for
red, yellow, green, cyan, blue and magenta, HSV similarity otherwise; :mod:`structured_hf.data.labels`), so the
recipe with X = red is exactly the red recipe.

Expansion happens when the recipe is parsed (before ``--set`` overrides are validated against it, after they are
applied), so the saved ``recipe.yaml`` holds explicit colors. Errors name the field: an unknown or out-of-range
``concept_color``, a gray (no hue) with hue offsets, a relative color without ``concept_color``, or a
``concept_color`` that nothing refers to.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..data.colors import hue_color, hue_name, hue_of, parse_color, to_hsv
from ..errors import StructuredConfigError

CONCEPT_COLOR = "concept_color"
_RELATIVE = re.compile(r"^concept(?:(?P<sign>[+-])(?P<deg>\d+(?:\.\d+)?))?$")


def is_relative(value: Any) -> bool:
    """Whether ``value`` is a concept-relative color (``concept``, ``concept+60``, ``concept-30.5``)."""
    return isinstance(value, str) and _RELATIVE.match(value) is not None


def _resolver(color: Any) -> Callable[[str, str], Any]:
    """``resolve(token, field)`` for a parsed ``concept_color``: the color the token stands for (a name or an RGB
    list)."""
    rgb = parse_color(color, CONCEPT_COLOR)
    saturation = float(to_hsv([rgb])[0, 1])
    base_hue = hue_of(rgb)

    def resolve(token: str, field: str) -> Any:
        match = _RELATIVE.match(token)
        if match.group("sign") is None:
            return color if isinstance(color, str) else list(rgb)
        if saturation == 0.0:
            raise StructuredConfigError(
                field, f"'{token}' is a hue offset, but concept_color {color!r} is a gray and has no hue"
            )
        offset = float(match.group("deg")) * (1 if match.group("sign") == "+" else -1)
        hue = (base_hue + offset) % 360.0
        name = hue_name(hue)
        return name if name is not None else list(hue_color(hue))

    return resolve


def _name_of(value: Any, token: str) -> str:
    """The name a token stands for: its color's name, ``hue<deg>`` for an unnamed hue, ``concept`` for an unnamed
    concept color."""
    if isinstance(value, str):
        return value
    if _RELATIVE.match(token).group("sign") is None:
        return "concept"
    return f"hue{hue_of(value):.0f}"


def _name_slots(raw: dict[str, Any]) -> list[tuple[Any, Any, str]]:
    """``(container, key, field)`` of every value that names a concept or a label (mapping keys are renamed by
    :func:`expand_concept_color` itself)."""
    slots: list[tuple[Any, Any, str]] = []
    model = raw.get("model")
    if isinstance(model, Mapping):
        for i, concept in enumerate(model.get("concepts") or []):
            if isinstance(concept, Mapping) and "name" in concept:
                slots.append((concept, "name", f"model.concepts[{i}].name"))
    for kind in ("regularizers", "routes"):
        for i, entry in enumerate(raw.get(kind) or []):
            if isinstance(entry, Mapping):
                slots.extend((entry, k, f"{kind}[{i}].{k}") for k in ("concept", "label") if k in entry)
    return slots


def _color_slots(raw: Mapping[str, Any]) -> list[tuple[Any, Any, str]]:
    """``(container, key, field)`` of every place in a raw recipe that holds one color."""
    slots: list[tuple[Any, Any, str]] = []

    def add_list(values: Any, field: str) -> None:
        if isinstance(values, list):
            slots.extend((values, i, f"{field}[{i}]") for i in range(len(values)))

    model, data = raw.get("model"), raw.get("data")
    if isinstance(model, Mapping):
        for i, concept in enumerate(model.get("concepts") or []):
            if isinstance(concept, Mapping):
                add_list(concept.get("prototypes"), f"model.concepts[{i}].prototypes")
    if isinstance(data, Mapping):
        for name, spec in (data.get("labels") or {}).items():
            feature = spec.get("feature") if isinstance(spec, Mapping) else None
            if isinstance(feature, Mapping):
                slots.extend((feature, k, f"data.labels.{name}.feature.{k}") for k in feature)
        if isinstance(data.get("eval_labels"), Mapping):
            for name, listed in data["eval_labels"].items():
                add_list(listed, f"data.eval_labels.{name}")
        for split in ("train", "eval"):
            if isinstance(data.get(split), Mapping):
                add_list(data[split].get("colors"), f"data.{split}.colors")
    for i, reg in enumerate(raw.get("regularizers") or []):
        params = reg.get("params") if isinstance(reg, Mapping) else None
        if isinstance(params, Mapping) and "target" in params:
            slots.append((params, "target", f"regularizers[{i}].params.target"))
    return slots


def expand_concept_color(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the raw recipe with ``concept_color`` removed and every concept-relative color made explicit.

    A recipe without ``concept_color`` and without relative colors is returned unchanged (as a copy).
    """
    out = copy.deepcopy(dict(raw))
    has_color = CONCEPT_COLOR in out
    color = out.pop(CONCEPT_COLOR, None)
    resolve = _resolver(color) if has_color else None
    used = False
    for container, key, field in _color_slots(out):
        value = container[key]
        if not is_relative(value):
            continue
        if resolve is None:
            raise StructuredConfigError(
                field,
                f"'{value}' is relative to the concept's color, but the recipe sets "
                "no concept_color (add `concept_color: red`, or --set concept_color=X)",
            )
        container[key] = resolve(value, field)
        used = True
    if resolve is not None:
        # Names: only in a parameterised recipe (elsewhere "concept" is an ordinary name).
        for container, key, field in _name_slots(out):
            if is_relative(container[key]):
                container[key] = _name_of(resolve(container[key], field), container[key])
                used = True
        data = out.get("data")
        for section in ("labels", "eval_labels"):
            mapping = data.get(section) if isinstance(data, Mapping) else None
            if isinstance(mapping, Mapping) and any(is_relative(k) for k in mapping):
                renamed = {
                    (_name_of(resolve(k, f"data.{section}.{k}"), k) if is_relative(k) else k): v
                    for k, v in mapping.items()
                }
                if len(renamed) != len(mapping):
                    raise StructuredConfigError(
                        f"data.{section}",
                        f"two labels get the same name with concept_color "
                        f"{color!r}: {sorted(mapping)} -> {sorted(renamed)}",
                    )
                data[section] = renamed
    if has_color and not used:
        raise StructuredConfigError(
            CONCEPT_COLOR,
            f"is {color!r}, but no color in the recipe refers to it (write "
            "prototypes, label features and eval labels as concept, "
            "concept+60, ...)",
        )
    return out


def relative_hue_names(color: Any, offsets: tuple[float, ...] = (0, 60, -60, 120, -120, 180)) -> dict[float, str]:
    """Name (or RGB text) of the hue at each offset from ``color``'s hue: what a parameterised recipe will use."""
    resolve = _resolver(color)
    out = {}
    for d in offsets:
        value = resolve("concept" if d == 0 else f"concept{'+' if d > 0 else '-'}{abs(d):g}", CONCEPT_COLOR)
        out[d] = value if isinstance(value, str) else str([round(c, 3) for c in value])
    return out


__all__ = ["CONCEPT_COLOR", "expand_concept_color", "is_relative", "relative_hue_names"]
