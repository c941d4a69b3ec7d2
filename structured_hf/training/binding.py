"""Regularizer specs bound to a model: each spec's concept, site and loss resolved once, with errors that name the
spec (``regularizers[2] ('separate').site: unknown site ...``) before training starts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..concepts import ConceptMap, ConceptSpec
from ..errors import StructuredConfigError
from ..interventions.suppression import concept_axes, concept_suppressor
from ..losses import LOSSES, check_loss_params
from .arguments import RegularizerSpec
from .speclist import bind_concept, bind_site, check_label


@dataclass(frozen=True)
class _BoundRegularizer:
    """A regularizer spec resolved against the model: its concept object, site and loss function."""

    spec: RegularizerSpec
    concept: ConceptSpec | None
    site: str
    readout: Callable[[torch.Tensor], torch.Tensor] | None = None  # losses that read past the site (LossInfo)

    def per_sample(self, rows: torch.Tensor) -> torch.Tensor:
        if self.readout is not None:
            return LOSSES[self.spec.loss].fn(rows, self.concept, readout=self.readout, **self.spec.params)
        return LOSSES[self.spec.loss].fn(rows, self.concept, **self.spec.params)


def _bind_regularizers(
    specs: list[RegularizerSpec],
    concepts: ConceptMap,
    dims: Mapping[str, int],
    known_labels: Any,
    model: torch.nn.Module | None = None,
) -> list[_BoundRegularizer]:
    """Resolve each spec's concept and site against the model, with errors naming the spec."""
    bound = []
    for i, spec in enumerate(specs):
        field = f"regularizers[{i}] ('{spec.name}')"
        concept = None
        if spec.concept is not None:
            concept = bind_concept(field, spec.concept, concepts)
            check_concept_kind(field, spec, concept)
        site = bind_site(field, spec.site, concept, dims)
        check_label(field, spec.label, known_labels)
        _check_params(f"{field}.params", spec.loss, spec.params)
        readout = None
        kind = LOSSES[spec.loss].readout
        if kind is not None:
            method = READOUTS[kind][0]
            if model is None or not hasattr(model, method):
                raise StructuredConfigError(
                    f"{field}.loss",
                    f"loss '{spec.loss}' reads the model past the site; "
                    f"{type(model).__name__} has no {method} (the color autoencoder "
                    "has)",
                )
            if not spec.label:
                raise StructuredConfigError(
                    f"{field}.label",
                    f"loss '{spec.loss}' needs a label: it sets what "
                    f"{kind} does to the labelled samples, not to all of them",
                )
            readout = bind_readout(model, kind, site, concept)
        bound.append(_BoundRegularizer(spec, concept, site, readout))
    return bound


def check_concept_kind(field: str, spec: RegularizerSpec, concept: ConceptSpec) -> None:
    """A loss gets the kind of concept it is written for (a direction or axes: LossInfo.concept_kind); the single
    and the batched trainer both check it before anything trains."""
    needed = LOSSES[spec.loss].concept_kind
    if concept.kind != needed:
        raise StructuredConfigError(
            f"{field}.concept",
            f"loss '{spec.loss}' needs a concept with {needed}, '{concept.name}' has {concept.kind}",
        )


# Each kind of readout (LossInfo.readout): the method of a model (or of the batched model) that builds it, and what
# that method is given besides the site: the concept's axes (pruned) or the rewrite suppress:CONCEPT hooks on.
READOUTS: dict[str, tuple[str, Callable[[ConceptSpec], Any]]] = {
    "deletion": ("deletion_readout", concept_axes),
    "suppression": ("intervened_readout", concept_suppressor),
}


def bind_readout(owner: Any, kind: str, site: str, concept: ConceptSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    """The readout a loss of this kind reads, built by ``owner`` (a model, or the batched seed model, which have the
    same two methods): the concept's axes pruned (``deletion``), or the site rewritten as ``suppress:CONCEPT``
    rewrites it (``suppression``). One place for both trainers, so the single and the batched runs read the same."""
    if kind not in READOUTS:
        raise StructuredConfigError("loss", f"unknown readout kind {kind!r}; known: {sorted(READOUTS)}")
    method, argument = READOUTS[kind]
    return getattr(owner, method)(site, argument(concept))


def _check_params(field: str, loss: str, params: Mapping[str, Any]) -> None:
    """Parameter names, types and ranges (:func:`~structured_hf.losses.check_loss_params`), checked again at
    construction for specs built in Python rather than loaded from a recipe."""
    check_loss_params(field, loss, params)
