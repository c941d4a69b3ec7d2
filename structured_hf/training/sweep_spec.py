"""How a raw recipe varies: dotted-key overrides (``--set``, sweep variants) and the parsed ``sweep:`` section.

Below :mod:`structured_hf.training.recipe` (which applies overrides and validates a sweep while parsing) and
:mod:`structured_hf.training.sweep` (which expands and runs sweeps). Parsing a sweep parses each of its runs as a recipe,
and parsing a recipe parses its sweep; the recipe parser is therefore passed in (``parse_run``) rather than imported,
so that the two modules do not import each other.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StructuredConfigError
from ..validation import check_keys

_SWEEP_KEYS = {"seeds", "regularizer_subsets", "variants", "figures"}
_VARIANT_KEYS = {"name", "set"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class SweepVariant:
    """A named set of dotted-key overrides."""

    name: str
    set: Mapping[str, Any]


@dataclass(frozen=True)
class SweepSpec:
    """A parsed ``sweep:`` section (see module docstring)."""

    seeds: tuple[int, ...] | None = None
    regularizer_subsets: tuple[str, ...] | None = None
    variants: tuple[SweepVariant, ...] = ()
    figures: bool = False


def regularizer_name(entry: Mapping[str, Any]) -> str:
    """A raw regularizer entry's name: its ``name``, else the default the trainer gives it
    (``arguments.RegularizerSpec.from_dict``): ``loss:concept``, or the loss alone."""
    if entry.get("name"):
        return str(entry["name"])
    return f"{entry.get('loss')}:{entry['concept']}" if entry.get("concept") else str(entry.get("loss"))


def set_path(tree: dict[str, Any], dotted: str, value: Any, field: str) -> None:
    """Set ``value`` at a dotted path; list parts are indices or entry ``name``s; missing mapping keys are created."""
    parts = dotted.split(".")
    node: Any = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[:depth]) or "the recipe"
        if isinstance(node, list):
            index = _list_index(node, part)
            if index is None:
                names = [e.get("name") for e in node if isinstance(e, Mapping) and e.get("name")]
                raise StructuredConfigError(
                    field, f"'{part}' is neither an index nor the name of an entry of {where} (names: {names})"
                )
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise StructuredConfigError(
                field, f"cannot set '{part}' inside {where}, which is {type(node).__name__} {node!r}"
            )


def _list_index(items: list, part: str) -> int | None:
    if re.fullmatch(r"-?\d+", part):
        i = int(part)
        return i if -len(items) <= i < len(items) else None
    for i, entry in enumerate(items):
        if isinstance(entry, Mapping) and (entry.get("name") == part or regularizer_name(entry) == part):
            return i
    return None


def parse_sweep(
    spec: Any, raw_recipe: Mapping[str, Any], field: str = "sweep", *, parse_run: Callable[[Mapping[str, Any]], Any]
) -> SweepSpec | None:
    """Validate a ``sweep:`` section against the (raw, sweep-free) recipe it belongs to; ``None`` for no sweep.

    Every run it expands to is parsed as a recipe here (``parse_run``: ``recipe.parse_recipe``, passed in because
    parsing a recipe parses its sweep), so a wrong dotted key or value fails at load time.
    """
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise StructuredConfigError(
            field, f"expected a mapping with seeds / regularizer_subsets / variants, got {spec!r}"
        )
    check_keys(field, spec, _SWEEP_KEYS)
    seeds = spec.get("seeds")
    if seeds is not None:
        if (
            not isinstance(seeds, Sequence)
            or isinstance(seeds, str)
            or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        ):
            raise StructuredConfigError(f"{field}.seeds", f"expected a non-empty list of integers, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise StructuredConfigError(f"{field}.seeds", f"seeds must be distinct, got {list(seeds)}")
        seeds = tuple(seeds)
    names = [regularizer_name(r) for r in (raw_recipe.get("regularizers") or []) if isinstance(r, Mapping)]
    subsets = spec.get("regularizer_subsets", False)
    if subsets is True:
        if not names:
            raise StructuredConfigError(
                f"{field}.regularizer_subsets", "the recipe has no regularizers to take subsets of"
            )
        subsets = tuple(names)
    elif subsets is False or subsets is None:
        subsets = None
    elif isinstance(subsets, Sequence) and not isinstance(subsets, str) and subsets:
        for i, name in enumerate(subsets):
            if name not in names:
                raise StructuredConfigError(
                    f"{field}.regularizer_subsets[{i}]", f"unknown regularizer {name!r}; the recipe has {names}"
                )
        if len(set(subsets)) != len(subsets):
            raise StructuredConfigError(f"{field}.regularizer_subsets", f"names must be distinct, got {list(subsets)}")
        subsets = tuple(subsets)
    else:
        raise StructuredConfigError(
            f"{field}.regularizer_subsets",
            f"expected true/false or a non-empty list of regularizer names, got {subsets!r}",
        )
    variants = []
    entries = spec.get("variants") or []
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        raise StructuredConfigError(f"{field}.variants", f"expected a list of {{name, set}} mappings, got {entries!r}")
    for i, entry in enumerate(entries):
        vf = f"{field}.variants[{i}]"
        if not isinstance(entry, Mapping):
            raise StructuredConfigError(vf, f"expected a mapping {{name, set}}, got {entry!r}")
        check_keys(vf, entry, _VARIANT_KEYS)
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise StructuredConfigError(
                f"{vf}.name", f"expected a name of letters, digits and ._+- (it names a folder), got {name!r}"
            )
        if name in {v.name for v in variants}:
            raise StructuredConfigError(f"{vf}.name", f"duplicate variant name {name!r}")
        overrides = entry.get("set") or {}
        if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
            raise StructuredConfigError(f"{vf}.set", f"expected a mapping of dotted keys to values, got {overrides!r}")
        for key in overrides:
            if key == "sweep" or key.startswith("sweep."):
                raise StructuredConfigError(f"{vf}.set.{key}", "a variant cannot change the sweep itself")
        variants.append(SweepVariant(name, dict(overrides)))
    figures = spec.get("figures", False)
    if not isinstance(figures, bool):
        raise StructuredConfigError(f"{field}.figures", f"expected true or false, got {figures!r}")
    parsed = SweepSpec(seeds=seeds, regularizer_subsets=subsets, variants=tuple(variants), figures=figures)
    _expand_raw(raw_recipe, parsed, parse_run, field)  # parses every run: errors surface now, naming the sweep field
    return parsed


def regularizer_subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``names`` (2^n − 1), largest first, in the order the names are given."""
    out = []
    for size in range(len(names), 0, -1):
        out.extend(itertools.combinations(names, size))
    return out


def _expand_raw(
    raw: Mapping[str, Any], spec: SweepSpec, parse_run: Callable[[Mapping[str, Any]], Any], field: str = "sweep"
) -> list[tuple[str, dict, str, tuple]]:
    """(run name, raw recipe, variant name, kept regularizers) for every run, each parsed once as a check."""
    base = copy.deepcopy(dict(raw))
    base.pop("sweep", None)
    variants = spec.variants or (SweepVariant("base", {}),)
    all_names = [regularizer_name(r) for r in base.get("regularizers") or [] if isinstance(r, Mapping)]
    subsets: list[tuple[str, ...] | None] = [None]
    if spec.regularizer_subsets is not None:
        subsets = list(regularizer_subsets(spec.regularizer_subsets))
    seeds: list[int | None] = list(spec.seeds) if spec.seeds else [None]
    out = []
    for k, variant in enumerate(variants):
        raw_variant = copy.deepcopy(base)
        for key, value in variant.set.items():
            set_path(raw_variant, key, copy.deepcopy(value), f"{field}.variants[{k}].set.{key}")
        _check_parses(raw_variant, f"{field}.variants[{k}] ({variant.name!r})", parse_run)
        for subset in subsets:
            raw_subset = copy.deepcopy(raw_variant)
            kept_names = tuple(all_names)
            if subset is not None:
                dropped = set(spec.regularizer_subsets) - set(subset)
                raw_subset["regularizers"] = [
                    r for r in raw_subset.get("regularizers") or [] if regularizer_name(r) not in dropped
                ]
                # Reactive rules that move a dropped regularizer have nothing left to move.
                raw_subset["reactive"] = [
                    r
                    for r in raw_subset.get("reactive") or []
                    if not (isinstance(r, Mapping) and r.get("parameter") in dropped)
                ]
                kept_names = tuple(n for n in all_names if n not in dropped)
            for seed in seeds:
                raw_run = copy.deepcopy(raw_subset)
                if seed is not None:
                    raw_run["seed"] = seed
                parts = [] if len(variants) == 1 and not spec.variants else [variant.name]
                if subset is not None:
                    parts.append("+".join(subset))
                if seed is not None:
                    parts.append(f"seed{seed}")
                name = "-".join(parts) or "base"
                raw_run["output_dir"] = str(Path(str(base.get("output_dir", "outputs/run"))) / name)
                out.append((name, raw_run, variant.name, kept_names))
    if len({name for name, *_ in out}) != len(out):
        raise StructuredConfigError(field, "two runs would share a folder name; give variants distinct names")
    return out


def _check_parses(raw: Mapping[str, Any], where: str, parse_run: Callable[[Mapping[str, Any]], Any]) -> None:
    try:
        parse_run(raw)
    except StructuredConfigError as e:
        raise StructuredConfigError(where, str(e)) from None
