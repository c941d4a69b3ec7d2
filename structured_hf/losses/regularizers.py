"""Per-sample regularizers (the list: docs/design.md, "A short tour").

Every function maps activations ``x`` of shape ``(N, D)`` (any leading dims are flattened by the caller) and an
optional concept to a per-sample loss of shape ``(N,)``. They are pure: no trainer or config access, and no model
access except the ``readout`` callable of ``deletion_target`` and ``suppression_target``, which the trainer passes in.
Reduction over the batch (plain or label-weighted) is done once, in :mod:`.reduction`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..concepts import ConceptSpec
from ..data.colors import resolve_colors
from ..errors import StructuredConfigError
from ..validation import check_number

# Guards cos() and 1/d² against zero-length activations; small enough not to bias unit-norm latents.
_EPS = 1e-8

# Concept-derived constants (unit directions, axis indices), built once per (concept, dtype, device) instead of on
# every call: for a 263-parameter model these small tensor constructions cost as much as the loss itself.
_CONSTANTS: dict[tuple, torch.Tensor] = {}
_CONSTANTS_MAX = 1024


UNCHANGED = "unchanged"  # a readout target's "leave the sample as it decodes now"


def _constant(key: tuple, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``build()``, cached under ``key``. Not cached when ``key`` is unhashable (a hand-made concept with list
    fields) or while a dispatch mode (fake tensors, tracers, memory trackers) is active; always built outside
    inference mode, so a constant first made during evaluation can still be saved for backward in training."""
    try:
        cached = _CONSTANTS.get(key)
    except TypeError:
        return build()
    if cached is not None:
        return cached
    if torch._C._len_torch_dispatch_stack() > 0:
        return build()
    with torch.inference_mode(False):
        value = build()
    if len(_CONSTANTS) >= _CONSTANTS_MAX:
        _CONSTANTS.clear()
    _CONSTANTS[key] = value
    return value


def _unit_direction(concept: ConceptSpec, x: torch.Tensor) -> torch.Tensor:
    return _constant(
        ("unit", concept, x.dtype, x.device), lambda: concept.unit_direction(dtype=x.dtype, device=x.device)
    )


def _axis_index(concept: ConceptSpec, x: torch.Tensor, inside: bool) -> torch.Tensor:
    """Indices of the concept's axes (``inside``) or of the other axes of ``x``'s last dimension."""

    def build() -> torch.Tensor:
        mask = concept.axis_mask(x.shape[-1], device=x.device)
        return torch.nonzero(mask if inside else ~mask).flatten()

    return _constant(("axes", concept, inside, x.shape[-1], x.device), build)


def _cos_to(x: torch.Tensor, concept: ConceptSpec) -> torch.Tensor:
    v = _unit_direction(concept, x)
    return (x @ v) / x.norm(dim=-1).clamp_min(_EPS)  # (N,)


def anchor(x: torch.Tensor, concept: ConceptSpec) -> torch.Tensor:
    """Euclidean anchor ``‖x − a‖²``: pulls the sample onto the concept's point (its direction as written)."""
    a = _constant(("vector", concept, x.dtype, x.device), lambda: concept.vector(dtype=x.dtype, device=x.device))
    return (x - a).square().sum(-1)


def angular_anchor(x: torch.Tensor, concept: ConceptSpec) -> torch.Tensor:
    """``1 − cos(x, a)``: pulls the sample's direction onto the concept's, whatever its norm."""
    return 1.0 - _cos_to(x, concept)


def anti_anchor(x: torch.Tensor, concept: ConceptSpec, full_sphere: bool = False) -> torch.Tensor:
    """Pushes away from the concept: hemisphere ``max(cos, 0)`` or full sphere ``(cos + 1)/2``."""
    cos = _cos_to(x, concept)
    return (cos + 1.0) / 2.0 if full_sphere else cos.clamp_min(0.0)


def cone_anchor(x: torch.Tensor, concept: ConceptSpec, cosine: float = 0.0) -> torch.Tensor:
    """``(cos(x, a) − c)²``: pulls the sample onto the cone of angle ``arccos(c)`` around the concept.

    Fixes how far a sample sits from the concept without choosing the side: green and blue at ``c = −0.5`` land 120°
    from red on either side, so the wheel may wind either way (a fixed anchor direction for each would impose one
    winding, and seeds whose wheel formed the other way fold over).
    """
    if not -1.0 <= cosine <= 1.0:
        raise ValueError(f"cone_anchor: cosine must be in [-1, 1], got {cosine}")
    return (_cos_to(x, concept) - cosine).square()


def unitarity(x: torch.Tensor, concept: ConceptSpec | None = None) -> torch.Tensor:
    """``(‖x‖ − 1)²``: keeps the sample on the unit sphere without explicit normalization."""
    return (x.norm(dim=-1) - 1.0).square()


def _relative(share: torch.Tensor, x: torch.Tensor, relative: bool) -> torch.Tensor:
    # Relative form: the share of the squared norm. Needed where activations are not unit-norm and what reads them
    # is scale-invariant (a transformer's pre-norm residual stream): the absolute form could be met by shrinking
    # the whole stream while the direction stays on the forbidden axes.
    return share / x.square().sum(-1).clamp_min(_EPS) if relative else share


def subspace(x: torch.Tensor, concept: ConceptSpec, relative: bool = False) -> torch.Tensor:
    """``Σ x_d²`` over the axes *outside* the concept's axes (divided by ``‖x‖²`` when ``relative``): keeps the
    sample in the concept's subspace."""
    # index_select gathers the same elements as boolean-mask indexing (bit-identical values and gradients) without
    # the mask -> indices conversion on every call.
    return _relative(x.index_select(-1, _axis_index(concept, x, inside=False)).square().sum(-1), x, relative)


def angular_subspace(x: torch.Tensor, concept: ConceptSpec) -> torch.Tensor:
    """``1 − ‖x_in‖/‖x‖``: ``1 − cos`` of the angle between the sample and the concept's subspace.

    The subspace version of ``angular_anchor``: the sample may point anywhere inside the subspace (a concept spread
    over several reserved axes keeps that many degrees of freedom). ``subspace`` with ``relative`` is
    ``1 − cos²`` of the same angle, whose gradient vanishes when the sample starts (nearly) orthogonal to the
    subspace, which is where a wide residual stream starts; ``1 − cos`` pulls from there too.
    """
    inside = x.index_select(-1, _axis_index(concept, x, inside=True)).norm(dim=-1)
    return 1.0 - inside / x.norm(dim=-1).clamp_min(_EPS)


def anti_subspace(x: torch.Tensor, concept: ConceptSpec, relative: bool = False) -> torch.Tensor:
    """``Σ x_d²`` over the concept's axes (divided by ``‖x‖²`` when ``relative``): keeps reserved axes clear."""
    return _relative(x.index_select(-1, _axis_index(concept, x, inside=True)).square().sum(-1), x, relative)


def _distinct_pairs(x: torch.Tensor) -> torch.Tensor:
    """(N, N) mask of pairs (i, j) that repel: j ≠ i and x_j not an exact duplicate of x_i.

    Duplicates are excluded because sampling with replacement often puts the same color twice in a batch; two
    identical latents cannot be pushed apart and would only add a constant (or an infinity, for 1/d²).
    """
    return (x.unsqueeze(0) != x.unsqueeze(1)).any(-1)


def angular_repulsion(x: torch.Tensor, concept: ConceptSpec | None = None, power: float = 100.0) -> torch.Tensor:
    """``Σ_j ((1 + cos(x_i, x_j))/2)^p`` over the other batch members: spreads samples over the sphere.

    A large ``p`` (100 in M2) makes only near neighbours repel, so the term shapes local spacing without fighting
    the anchors globally.
    """
    u = F.normalize(x, dim=-1, eps=_EPS)
    sim = ((1.0 + u @ u.T) / 2.0).clamp(0.0, 1.0).pow(power)  # (N, N)
    return (sim * _distinct_pairs(x)).sum(-1)


def euclidean_repulsion(x: torch.Tensor, concept: ConceptSpec | None = None) -> torch.Tensor:
    """Mean over the other batch members of ``1/‖x_i − x_j‖²`` (M1.5/1.6)."""
    # Exact pairwise differences: cdist's matrix-product shortcut (used above 25 rows) loses float32 precision for
    # close points, exactly where 1/d² matters most.
    d2 = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").square()
    mask = _distinct_pairs(x)
    inv = torch.where(mask, 1.0 / d2.clamp_min(_EPS), torch.zeros_like(d2))
    return inv.sum(-1) / mask.sum(-1).clamp_min(1)


def deletion_target(
    x: torch.Tensor,
    concept: ConceptSpec,
    readout: Callable[[torch.Tensor], torch.Tensor],
    target: str | Sequence[float] = "black",
) -> torch.Tensor:
    """``mean((readout(x) − t)²)``: what the model will output for the sample once the concept's axes are deleted,
    pulled toward the color ``t`` (a name or an RGB triple), or with ``target: unchanged`` toward what the model
    outputs for it now (``readout.intact(x)``, held fixed): "deleting this concept leaves these samples alone".

    ``readout`` is the model's own forward pass from the site with the axes removed (the trainer passes
    ``model.deletion_readout(site, axes)``), so the term decides before training what deletion does to labelled
    samples (red reads as black after pruning, yellow stays yellow) instead of leaving it to wherever their
    renormalized remainder happens to point. It needs a model with ``deletion_readout``.
    """
    return _readout_target(x, readout, target)


def suppression_target(
    x: torch.Tensor,
    concept: ConceptSpec,
    readout: Callable[[torch.Tensor], torch.Tensor],
    target: str | Sequence[float] = "black",
) -> torch.Tensor:
    """``mean((readout(x) − t)²)`` on the *suppressed* readout: what the model outputs for the sample under the hard
    hemisphere suppression of the concept (``suppress:CONCEPT``: ``x − (x·v)v`` where ``x·v > 0``, not renormalized),
    pulled toward the color ``t`` or, with ``target: unchanged``, toward what it outputs now.

    The trainer passes ``model.intervened_readout(site, rewrite)`` with exactly the rewrite the intervention applies,
    so the term shapes what suppression will decode the labelled samples to. Why: hard suppression sends every latent
    near the concept to nearly one output p₀, and where p₀ lands decides how the damage falls off around the concept
    (docs/colors.md §5.3); left alone, p₀ lands where the weak labels happen to put it. Written relative to the
    concept (``target: concept+180``) it serves every color of a parameterised recipe.
    """
    return _readout_target(x, readout, target)


def _readout_target(
    x: torch.Tensor, readout: Callable[[torch.Tensor], torch.Tensor], target: str | Sequence[float]
) -> torch.Tensor:
    """The shared body of the readout targets: per-sample MSE of ``readout(x)`` to a color or to ``readout.intact``."""
    if isinstance(target, str) and target == UNCHANGED:
        # Detached: the term moves the edited path toward today's output, not today's output toward the edited one.
        return (readout(x) - readout.intact(x).detach()).square().mean(-1)
    t = _constant(
        ("target", _target_key(target), x.dtype, x.device),
        lambda: torch.as_tensor(resolve_colors([target], "params.target")[0], dtype=x.dtype, device=x.device),
    )
    return (readout(x) - t).square().mean(-1)


def _target_key(target: str | Sequence[float]) -> str | tuple:
    return target if isinstance(target, str) else tuple(target)


@dataclass(frozen=True)
class Param:
    """A loss parameter's type and range, checked when the recipe is loaded (not at the first labelled sample,
    which with sparse labels can come thousands of steps in).

    Args:
        kind: ``"float"`` (ints accepted), ``"bool"`` or ``"color"`` (a color name, an RGB triple in [0, 1], or
            ``unchanged``).
        low / high: inclusive bounds for floats; ``positive``: strictly greater than 0.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    positive: bool = False

    def check(self, field: str, value: object) -> None:
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise StructuredConfigError(field, f"expected true or false, got {value!r}")
            return
        if self.kind == "color":
            if value != UNCHANGED:
                resolve_colors([value], field)
            return
        if self.positive:
            check_number(field, value, low=0, low_open=True, high=self.high)
        else:
            check_number(field, value, low=self.low, high=self.high)


@dataclass(frozen=True)
class LossInfo:
    """A registered regularizer and the kind of concept it needs (``direction``, ``axes`` or ``None``)."""

    fn: Callable[..., torch.Tensor]
    concept_kind: str | None
    batch_coupled: bool = False  # depends on other batch members (repulsion): sees only its micro-batch
    # Reads the model past the site: called with ``readout=`` the model's output after an edit of the site, the
    # edit named here: ``deletion`` (the concept's axes pruned), ``suppression`` (suppress:CONCEPT, hard hemisphere);
    # training/binding.py builds them.
    readout: str | None = None
    # Every keyword parameter of ``fn`` a recipe may set, with its type and range.
    params: Mapping[str, Param] = field(default_factory=dict)

    @property
    def needs_readout(self) -> bool:
        return self.readout is not None


def check_loss_params(field_name: str, loss: str, params: Mapping[str, object]) -> None:
    """Unknown names, wrong types and out-of-range values of a loss's ``params`` fail naming the field."""
    declared = LOSSES[loss].params
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise StructuredConfigError(
            field_name, f"loss '{loss}' has no parameter(s) {unknown}; it takes {sorted(declared) or 'none'}"
        )
    for name, value in params.items():
        declared[name].check(f"{field_name}.{name}", value)


_RELATIVE = {"relative": Param("bool")}
LOSSES: dict[str, LossInfo] = {
    "anchor": LossInfo(anchor, "direction"),
    "angular_anchor": LossInfo(angular_anchor, "direction"),
    "anti_anchor": LossInfo(anti_anchor, "direction", params={"full_sphere": Param("bool")}),
    "cone_anchor": LossInfo(cone_anchor, "direction", params={"cosine": Param("float", low=-1.0, high=1.0)}),
    "unitarity": LossInfo(unitarity, None),
    "subspace": LossInfo(subspace, "axes", params=_RELATIVE),
    "angular_subspace": LossInfo(angular_subspace, "axes"),
    "anti_subspace": LossInfo(anti_subspace, "axes", params=_RELATIVE),
    # power > 0: at 0 every pair repels equally (a constant), below 0 far pairs would repel most.
    "angular_repulsion": LossInfo(
        angular_repulsion, None, batch_coupled=True, params={"power": Param("float", positive=True)}
    ),
    "euclidean_repulsion": LossInfo(euclidean_repulsion, None, batch_coupled=True),
    "deletion_target": LossInfo(deletion_target, "axes", readout="deletion", params={"target": Param("color")}),
    "suppression_target": LossInfo(
        suppression_target, "direction", readout="suppression", params={"target": Param("color")}
    ),
}
