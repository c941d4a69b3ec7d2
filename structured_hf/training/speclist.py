"""A recipe's lists of named specs (regularizers, routes): one place for the list, key and name checks, and for the
checks that bind a spec's concept, site and label to a model and its training data."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..concepts import ConceptMap, ConceptSpec
from ..errors import StructuredConfigError
from ..validation import check_keys

T = TypeVar("T")


def parse_spec_list(entries: Any, field_name: str, from_dict: Callable[[Any, str], T], kind: str) -> list[T]:
    """``[from_dict(entry, "<field>[i]") ...]`` for a YAML list (``None``: empty), with unique ``.name``s.

    Names must be unique because logs, schedules and reactive rules address each spec by name.
    """
    if entries is None:
        return []
    if not isinstance(entries, (list, tuple)):
        raise StructuredConfigError(field_name, f"expected a list of {kind} specs, got {type(entries).__name__}")
    specs = [from_dict(e, f"{field_name}[{i}]") for i, e in enumerate(entries)]
    names = [s.name for s in specs]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise StructuredConfigError(f"{field_name}[{i}].name", f"duplicate {kind} name '{n}'; set `name`")
    return specs


def check_entry(entry: Any, field_name: str, allowed: set[str], expected: str) -> None:
    """An entry of such a list must be a mapping with only ``allowed`` keys (``expected`` describes it)."""
    check_keys(field_name, entry, allowed, expected)


def bind_concept(field_name: str, name: str, concepts: ConceptMap) -> ConceptSpec:
    """The concept-map entry ``name``; an unknown name is an error that lists the map."""
    if name not in concepts:
        raise StructuredConfigError(
            f"{field_name}.concept", f"unknown concept '{name}'; the model's concept map has {concepts.names}"
        )
    return concepts[name]


def bind_site(field_name: str, site: str | None, concept: ConceptSpec | None, dims: Mapping[str, int]) -> str:
    """The spec's site (default: its concept's), which must exist and have the concept's width."""
    site = site or concept.site
    if site not in dims:
        raise StructuredConfigError(f"{field_name}.site", f"unknown site '{site}'; the model has {sorted(dims)}")
    if concept is not None and dims[site] != dims[concept.site]:
        raise StructuredConfigError(
            f"{field_name}.site",
            f"site '{site}' has width {dims[site]}, concept '{concept.name}' needs {dims[concept.site]}",
        )
    return site


def check_label(field_name: str, label: str | None, known_labels: Any) -> None:
    """A spec's label must be one the training data has (when the data says which it has)."""
    if label is not None and known_labels is not None and label not in known_labels:
        raise StructuredConfigError(
            f"{field_name}.label", f"unknown label '{label}'; the training data has labels {list(known_labels)}"
        )


def used_labels(regularizers: Any, routes: Any) -> list[str]:
    """The labels a run draws: those of its regularizers and routes (specs with a ``.label``), sorted."""
    return sorted({r.label for r in regularizers if r.label} | {r.label for r in routes})


def check_spec_labels(known: Any, regularizers: Any, routes: Any) -> None:
    """Every label a regularizer or route selects by must be one of ``known`` (the data's label names)."""
    for kind, entries in (("regularizers", regularizers), ("routes", routes)):
        for i, entry in enumerate(entries):
            if entry.label is not None and entry.label not in known:
                raise StructuredConfigError(
                    f"{kind}[{i}].label", f"unknown label '{entry.label}'; the labels config has concepts {known}"
                )
