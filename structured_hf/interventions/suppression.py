"""Inference-time interventions: suppression, repulsion and axis-aligned suppression of a concept (docs/m2-control.md).

Each intervention is a pure function of a site's activation (``suppression``, ``repulsion``, ``zero_axes``: they
work on the last dimension of any tensor) wrapped as a context manager that rewrites the site through
:func:`structured_hf.sites.rewrite`, so the hook is removed when the block exits, exception or not. Context managers
stack: hooks on the same site run in the order they were entered.

Samples that do not point toward the concept (``x·v <= 0``) are passed through with ``torch.where``, so they are
bit-identical to the un-intervened activation, and so is everything computed from them downstream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..concepts import ConceptMap, ConceptSpec
from ..errors import StructuredConfigError
from ..sites import rewrite, site_dims, zero_axes  # zero_axes lives in sites.py (models use it too)
from .falloff import BezierMapper, BoundedPowerFalloff, LinearMapper
from .specs import InterventionSpec, SurgerySpec, parse_spec

logger = logging.getLogger(__name__)

# Rows whose component orthogonal to v is shorter than this have no defined rotation plane (x ∥ v).
_EPS = 1e-12


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def alignment(x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x·v, α)`` with ``α = clamp(cos(x, v), 0, 1)`` for unit ``v``; shapes ``x.shape[:-1]``.

    α is the cosine, not the raw dot product, so the same falloff applies at a pre-normalization site; on a unit-norm
    site the two agree.
    """
    dot = x @ v
    alpha = (dot / x.norm(dim=-1).clamp_min(_EPS)).clamp(0.0, 1.0)
    return dot, alpha


def suppression(x: torch.Tensor, v: torch.Tensor, falloff: BoundedPowerFalloff | None = None) -> torch.Tensor:
    """``x' = x − g(α)(x·v)v`` for rows with ``x·v > 0``; other rows are returned bit-identical.

    Args:
        x: activations ``(..., D)``.
        v: concept direction ``(D,)`` (normalized here).
        falloff: ``g``; default hard hemisphere removal (``a = 0, b = 1, p = 0``).
    """
    return _suppress_unit(x, _unit(v.to(dtype=x.dtype, device=x.device)), falloff or BoundedPowerFalloff())


def _is_hard(falloff: BoundedPowerFalloff) -> bool:
    return falloff.a == 0.0 and falloff.b == 1.0 and falloff.p == 0.0


def _suppress_unit(x: torch.Tensor, v: torch.Tensor, falloff: BoundedPowerFalloff) -> torch.Tensor:
    """:func:`suppression` for a unit ``v`` already in ``x``'s dtype and device (the hook's hot path)."""
    if _is_hard(falloff):
        # g = 1 wherever x·v > 0: x − (x·v)v there, x itself elsewhere (selected, not x − 0·v, which would turn a
        # −0.0 entry into +0.0). Four ops instead of the dozen of the general falloff (α, the power, two selects).
        dot = x @ v
        return torch.where((dot > 0).unsqueeze(-1), x - dot.unsqueeze(-1) * v, x)
    dot, alpha = alignment(x, v)
    changed = x - (falloff(alpha) * dot).unsqueeze(-1) * v
    return torch.where((dot > 0).unsqueeze(-1), changed, x)


def _orthogonal_fallback(v: torch.Tensor) -> torch.Tensor:
    """A fixed unit vector orthogonal to ``v`` (the basis axis least aligned with it, orthogonalized)."""
    e = torch.zeros_like(v)
    e[int(v.abs().argmin())] = 1.0
    e = e - (e @ v) * v
    return e / e.norm()


def repulsion(x: torch.Tensor, v: torch.Tensor, mapper: LinearMapper | BezierMapper) -> torch.Tensor:
    """Rotate rows with ``x·v > 0`` in the ``(v, x)`` plane so that ``cos(x', v) = m(α)``, keeping ``‖x'‖ = ‖x‖``.

    ``x = ‖x‖(α v + sqrt(1 − α²) u)`` with ``u`` the unit component of ``x`` orthogonal to ``v``;
    ``x' = ‖x‖(m v + sqrt(1 − m²) u)``. A row exactly along ``v`` has no ``u``: it is sent along a fixed
    orthogonal axis (deterministic, documented, and the only choice that does not depend on noise).
    Rows with ``x·v <= 0`` are returned bit-identical.
    """
    v = _unit(v.to(dtype=x.dtype, device=x.device))
    return _repel_unit(x, v, _orthogonal_fallback(v), mapper)


def _repel_unit(
    x: torch.Tensor, v: torch.Tensor, fallback: torch.Tensor, mapper: LinearMapper | BezierMapper
) -> torch.Tensor:
    """:func:`repulsion` for a unit ``v`` and its fallback axis, already in ``x``'s dtype and device."""
    dot = x @ v
    norm = x.norm(dim=-1, keepdim=True)
    alpha = (dot / norm.squeeze(-1).clamp_min(_EPS)).clamp(0.0, 1.0)  # as `alignment`, reusing the norm
    ortho = x - dot.unsqueeze(-1) * v
    ortho_norm = ortho.norm(dim=-1, keepdim=True)
    # Below a few ulps of ‖x‖ the orthogonal part is rounding noise, not a direction.
    defined = ortho_norm > 16 * torch.finfo(x.dtype).eps * norm
    u = torch.where(defined, ortho / ortho_norm.clamp_min(_EPS), fallback)
    m = mapper(alpha).clamp(-1.0, 1.0).unsqueeze(-1)
    changed = norm * (m * v + (1.0 - m * m).clamp_min(0.0).sqrt() * u)
    return torch.where((dot > 0).unsqueeze(-1), changed, x)


class _PerDtype:
    """Tensors derived from a float64 concept direction, built once per (dtype, device) an activation arrives in.

    Converting and normalizing the direction inside the hook cost about as much as the suppression itself. Not cached
    while a dispatch mode (fake tensors, tracers, memory counters) is active; built outside inference mode, so a
    direction first made under ``torch.inference_mode`` still works in a later forward pass with autograd.
    """

    def __init__(self, direction: torch.Tensor, build: Callable[[torch.Tensor], Any]):
        self.direction = direction
        self.build = build
        self._cache: dict[tuple[torch.dtype, torch.device], Any] = {}

    def __call__(self, x: torch.Tensor) -> Any:
        key = (x.dtype, x.device)
        value = self._cache.get(key)
        if value is None:
            if torch._C._len_torch_dispatch_stack() > 0:
                return self.build(self.direction.to(dtype=x.dtype, device=x.device))
            with torch.inference_mode(False):
                value = self._cache[key] = self.build(self.direction.to(dtype=x.dtype, device=x.device))
        return value


def _axes_hook(axes: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`zero_axes` with the keep-mask built once per (width, device)."""
    masks: dict[tuple[int, torch.device], torch.Tensor] = {}

    def fn(x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[-1], x.device)
        mask = masks.get(key)
        if mask is None:
            with torch.inference_mode(False):  # `where` saves the mask for backward: no inference tensor
                mask = torch.ones(x.shape[-1], dtype=torch.bool, device=x.device)
                mask[list(axes)] = False
            if torch._C._len_torch_dispatch_stack() == 0:
                masks[key] = mask
        return torch.where(mask, x, 0.0)

    return fn


def _suppress_hook(v: torch.Tensor, falloff: BoundedPowerFalloff) -> Callable[[torch.Tensor], torch.Tensor]:
    unit = _PerDtype(v, _unit)
    return lambda x: _suppress_unit(x, unit(x), falloff)


def concept_suppressor(
    concept: ConceptSpec, falloff: BoundedPowerFalloff | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The rewrite ``suppress:CONCEPT`` hooks on the concept's site (default: the hard hemisphere removal), as a
    function of the site's activation ``(..., D)``: the same hook :func:`bind` builds, so a training loss that reads
    through it (``suppression_target``) sees bit for bit what the intervention will do."""
    return _suppress_hook(concept.unit_direction(dtype=torch.float64), falloff or BoundedPowerFalloff())


def _repel_hook(v: torch.Tensor, mapper: LinearMapper | BezierMapper) -> Callable[[torch.Tensor], torch.Tensor]:
    def build(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = _unit(w)
        return w, _orthogonal_fallback(w)

    pair = _PerDtype(v, build)

    def fn(x: torch.Tensor) -> torch.Tensor:
        w, fallback = pair(x)
        return _repel_unit(x, w, fallback, mapper)

    return fn


# ---- resolving specs against a model ----------------------------------------------------------------------------
def concept_axes(concept: ConceptSpec, tol: float = 1e-6) -> tuple[int, ...]:
    """A concept's axes: its ``axes``, or for a direction concept the axes where ``|d_i| > tol·max|d|``."""
    if concept.axes is not None:
        return tuple(concept.axes)
    d = torch.tensor(concept.direction, dtype=torch.float64).abs()
    return tuple(int(i) for i in torch.nonzero(d > tol * d.max()).flatten())


def default_site(model: nn.Module) -> str:
    """The site an intervention without a concept or site addresses: the one site of all concepts, else
    ``bottleneck``."""
    concepts = ConceptMap.of(model)
    sites = {c.site for c in concepts}
    if len(sites) == 1:
        return sites.pop()
    if "bottleneck" in site_dims(model):
        return "bottleneck"
    raise StructuredConfigError(
        "intervention.site", f"cannot choose a default site among {sorted(site_dims(model))}; name one with @SITE"
    )


@dataclass(frozen=True)
class BoundIntervention:
    """A spec resolved against a model: the site to rewrite and the function that rewrites it."""

    spec: InterventionSpec
    site: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    direction: torch.Tensor | None = None
    axes: tuple[int, ...] | None = None


def bind(model: nn.Module, spec: InterventionSpec | str) -> BoundIntervention:
    """Resolve a spec (or its string form) against ``model``: concept -> site and direction/axes, checked widths."""
    spec = parse_spec(spec) if not isinstance(spec, InterventionSpec) else spec
    if isinstance(spec, SurgerySpec):
        raise StructuredConfigError(
            "intervention",
            f"'{spec}' is surgery (a weight edit), not an inference-time "
            "intervention; use structured_hf.interventions.ablate/prune",
        )
    dims = site_dims(model)
    concept = None
    if spec.concept is not None:
        concept = ConceptMap.of(model)[spec.concept]
    site = spec.site or (concept.site if concept is not None else default_site(model))
    if site not in dims:
        raise StructuredConfigError("intervention.site", f"unknown site '{site}'; the model has {sorted(dims)}")
    width = dims[site]
    if spec.kind == "axes":
        axes = concept_axes(concept) if concept is not None else spec.axes
        if max(axes) >= width:
            raise StructuredConfigError(
                "intervention.axes", f"axis {max(axes)} is out of range for site '{site}' of width {width}"
            )
        return BoundIntervention(spec, site, _axes_hook(tuple(axes)), axes=tuple(axes))
    if concept is not None:
        if concept.direction is None:
            raise StructuredConfigError(
                "intervention.concept",
                f"'{spec.kind}' needs a direction concept; '{concept.name}' is an axes "
                f"concept (zero its axes with 'axes:{concept.name}')",
            )
        v = concept.unit_direction(dtype=torch.float64)
    else:
        v = torch.tensor(spec.vector, dtype=torch.float64)
        v = v / v.norm()
    if v.numel() != width:
        raise StructuredConfigError(
            "intervention.vector", f"has length {v.numel()} but site '{site}' has width {width}"
        )
    if spec.kind == "suppress":
        falloff = spec.resolved_falloff
        return BoundIntervention(spec, site, _suppress_hook(v, falloff), direction=v)
    return BoundIntervention(spec, site, _repel_hook(v, spec.resolved_mapper), direction=v)


@contextmanager
def intervene(
    model: nn.Module, specs: InterventionSpec | str | Iterable[InterventionSpec | str]
) -> Iterator[list[BoundIntervention]]:
    """Apply one or several interventions inside the block (in order); all hooks are removed on exit.

    Example::

        with intervene(model, ["suppress:red", "axes:3"]):
            out = model(colors=x)
    """
    if isinstance(specs, (str, InterventionSpec)):
        specs = [specs]
    bound = [bind(model, s) for s in specs]  # resolve everything before registering anything
    with ExitStack() as stack:
        for b in bound:
            stack.enter_context(rewrite(model, b.site, b.fn))
            logger.debug("intervention %s on site '%s'", b.spec, b.site)
        yield bound


def suppress(
    model: nn.Module,
    concept: str | None = None,
    *,
    site: str | None = None,
    vector: Sequence[float] | torch.Tensor | None = None,
    falloff: BoundedPowerFalloff | None = None,
):
    """Context manager: suppress a concept (by name) or an explicit ``vector`` at ``site``.

    Example::

        with suppress(model, "red"):                               # hard hemisphere removal
            ...
        with suppress(model, site="bottleneck", vector=[1, 0, 0, 0], falloff=BoundedPowerFalloff(0.0, 1.0, 2.0)):
            ...
    """
    vector = None if vector is None else [float(x) for x in torch.as_tensor(vector).flatten()]
    return intervene(model, InterventionSpec("suppress", concept=concept, site=site, vector=vector, falloff=falloff))


def repel(
    model: nn.Module,
    concept: str | None = None,
    *,
    site: str | None = None,
    vector: Sequence[float] | torch.Tensor | None = None,
    mapper: LinearMapper | BezierMapper | None = None,
):
    """Context manager: rotate samples in the concept's hemisphere toward its equator by ``mapper``."""
    vector = None if vector is None else [float(x) for x in torch.as_tensor(vector).flatten()]
    return intervene(model, InterventionSpec("repel", concept=concept, site=site, vector=vector, mapper=mapper))


def suppress_axes(model: nn.Module, axes: Sequence[int] | str, *, site: str | None = None):
    """Context manager: zero ``axes`` (or the axes of the concept named ``axes``) at ``site``."""
    if isinstance(axes, str):
        return intervene(model, InterventionSpec("axes", concept=axes, site=site))
    return intervene(model, InterventionSpec("axes", axes=tuple(int(a) for a in axes), site=site))


__all__ = [
    "BoundIntervention",
    "alignment",
    "bind",
    "concept_axes",
    "concept_suppressor",
    "default_site",
    "intervene",
    "repel",
    "repulsion",
    "suppress",
    "suppress_axes",
    "suppression",
    "zero_axes",
]
