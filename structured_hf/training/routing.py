"""Gradient routing: labelled samples learn, upstream of a site, only through the concept's reserved axes.

Anchoring (the regularizers) says *where* a concept's activations must be; it does not stop the rest of the network
from learning the concept as well. Gradient routing (Cloud et al. 2024, "Gradient Routing: Masking Gradients to
Localize Computation in Neural Networks") adds the missing half: for a sample (or token) with the label, the task
loss's gradient that reaches a site passes back to the weights before it *only through the reserved axes*; on every
other axis it is stopped. Everything those upstream weights learn from concept data must therefore be written into
the reserved axes, which is exactly what :func:`structured_hf.interventions.ablate` deletes. Unlabelled samples train
every axis as usual (and the anti-subspace regularizers keep the reserved axes clear for them).

The forward pass is unchanged, bit for bit: the routed activation is ``x + m ⊙ (stopgrad(x) − x)`` where ``m`` is
1 on the non-reserved axes of labelled rows and 0 elsewhere, and ``stopgrad(x) − x`` is exactly 0. Only the backward
pass differs: ``∂x_routed/∂x = 1 − m``. Soft labels (in [0, 1]) scale the stopped share, so a label of 0.3 lets 70 %
of the gradient through.

The regularizers read the site *before* routing (their recorders are attached first), so an anchor on a labelled
token still moves all of its axes; routing restricts only what the model's own loss teaches upstream weights.

Routes are written in a recipe under ``routes:``::

    routes:
      - {concept: violence-axis, label: violence}          # site: the concept's own
      - {concept: violence-axis, label: violence, site: layers.0.residual_post, weight: ...}

``weight`` is a schedule in [0, 1] for the stopped share (1: full routing, the default; 0: off), so routing can be
switched on after a warm-up or faded out at the end like any other term.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..concepts import ConceptMap
from ..errors import StructuredConfigError
from ..interventions.suppression import concept_axes
from ..schedules import Schedule, parse_schedule
from ..validation import check_name
from .speclist import bind_concept, bind_site, check_entry, check_label, parse_spec_list

_ROUTE_KEYS = {"name", "concept", "label", "site", "weight"}


@dataclass(frozen=True)
class RouteSpec:
    """One gradient route: samples with ``label`` learn upstream of ``site`` only through ``concept``'s axes.

    Args:
        concept: concept-map entry whose axes are reserved (an axes concept, or a direction concept: its nonzero
            axes).
        label: weak label that selects the routed samples or tokens (token-level labels route per token).
        site: activation site (default: the concept's site; it must have the concept's width).
        weight: share of the gradient stopped on the other axes, constant or keyframed, in [0, 1].
        name: unique name used in logs and schedules (default ``"route:<concept>"``, ``"route:<concept>@<site>"``
            when the site is given).
    """

    name: str
    concept: str
    label: str
    site: str | None = None
    weight: Schedule = field(default_factory=lambda: Schedule.constant(1.0))

    @classmethod
    def from_dict(cls, entry: Any, field_name: str) -> RouteSpec:
        if isinstance(entry, RouteSpec):
            return entry
        check_entry(entry, field_name, _ROUTE_KEYS, "concept/label[/site/weight]")
        for key in ("concept", "label"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise StructuredConfigError(f"{field_name}.{key}", f"expected a name, got {entry.get(key)!r}")
        if entry["label"].startswith("not:"):
            raise StructuredConfigError(
                f"{field_name}.label",
                "a route follows the samples *with* a label; "
                f"'not:' labels are for regularizers, got {entry['label']!r}",
            )
        site = entry.get("site")
        if site is not None and not isinstance(site, str):
            raise StructuredConfigError(f"{field_name}.site", f"expected a site name, got {site!r}")
        weight = parse_schedule(entry.get("weight", 1.0), f"{field_name}.weight")
        name = entry.get("name") or f"route:{entry['concept']}" + (f"@{site}" if site else "")
        check_name(f"{field_name}.name", name)
        return cls(name=name, concept=entry["concept"], label=entry["label"], site=site, weight=weight)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form :meth:`from_dict` reads back to an equal spec."""
        out: dict[str, Any] = {"name": self.name, "concept": self.concept, "label": self.label}
        if self.site is not None:
            out["site"] = self.site
        out["weight"] = self.weight.to_dict()
        return out


def parse_routes(entries: Any, field_name: str = "routes") -> list[RouteSpec]:
    return parse_spec_list(entries, field_name, RouteSpec.from_dict, "route")


def route_gradient(
    x: torch.Tensor, labels: torch.Tensor, reserved: torch.Tensor, strength: float = 1.0
) -> torch.Tensor:
    """``x`` in the forward pass; in the backward pass the gradient of labelled rows is stopped off ``reserved``.

    Args:
        x: activations ``(B, D)`` or ``(B, T, D)``.
        labels: ``(B,)`` sample labels or ``(B, T)`` token labels in [0, 1].
        reserved: boolean ``(D,)``, true on the axes the gradient may still flow through.
        strength: share of the gradient stopped on the other axes (1: all of it).
    """
    if labels.ndim == 1 and x.ndim == 3 and labels.shape[0] == x.shape[0]:
        labels = labels[:, None].expand(x.shape[:-1])  # a sample label covers all of its tokens
    if labels.shape != x.shape[:-1]:
        raise StructuredConfigError(
            "routes", f"labels of shape {tuple(labels.shape)} do not match activations {tuple(x.shape)}"
        )
    if reserved.shape != x.shape[-1:]:
        raise StructuredConfigError(
            "routes", f"reserved mask of width {reserved.shape[0]} for a site of width {x.shape[-1]}"
        )
    stop = (~reserved).to(x.dtype)  # (D,)
    mask = (labels.to(x.dtype) * strength).unsqueeze(-1) * stop  # (B[, T], D)
    return x + mask * (x.detach() - x)


@dataclass(frozen=True)
class BoundRoute:
    """A route resolved against a model: its site and the boolean mask of the reserved axes."""

    spec: RouteSpec
    site: str
    reserved: torch.Tensor


def bind_routes(
    routes: Sequence[RouteSpec],
    concepts: ConceptMap,
    dims: Mapping[str, int],
    known_labels: Sequence[str] | None = None,
) -> list[BoundRoute]:
    """Check every route against the model's concept map and sites, with errors naming the route."""
    bound = []
    for i, spec in enumerate(routes):
        field_name = f"routes[{i}] ('{spec.name}')"
        concept = bind_concept(field_name, spec.concept, concepts)
        site = bind_site(field_name, spec.site, concept, dims)
        check_label(field_name, spec.label, known_labels)
        reserved = torch.zeros(dims[site], dtype=torch.bool)
        reserved[list(concept_axes(concept))] = True
        bound.append(BoundRoute(spec, site, reserved))
    return bound


@contextmanager
def gradient_routes(
    site_modules: Mapping[str, nn.Module],
    routes: Sequence[BoundRoute],
    state: Callable[[], tuple[Mapping[str, torch.Tensor] | None, Mapping[str, float]]],
) -> Iterator[None]:
    """Attach the routing hooks to the sites for the duration of the block (removed in ``finally``).

    ``state()`` returns the current step's labels (``None`` outside a training forward pass: no routing) and the
    route weights by name; the trainer sets both before each forward pass.
    """
    handles = []

    def make_hook(route: BoundRoute) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            labels, weights = state()
            strength = weights.get(route.spec.name, 0.0)
            if labels is None or strength == 0.0:
                return None
            reserved = route.reserved.to(output.device)
            return route_gradient(output, labels[route.spec.label], reserved, strength)

        return hook

    try:
        for route in routes:
            handles.append(site_modules[route.site].register_forward_hook(make_hook(route)))
        yield
    finally:
        for h in handles:
            h.remove()


__all__ = ["BoundRoute", "RouteSpec", "bind_routes", "gradient_routes", "parse_routes", "route_gradient"]
