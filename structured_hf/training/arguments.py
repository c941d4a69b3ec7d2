"""Training arguments that carry the anchoring recipe: regularizer specs and schedules."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from ..errors import StructuredConfigError
from ..losses import LOSSES, check_loss_params
from ..schedules import Schedule, parse_schedule
from .routing import RouteSpec, parse_routes
from ..validation import check_name
from .speclist import check_entry, parse_spec_list
from .transitions import ReactiveRule

_REG_KEYS = {"name", "loss", "concept", "label", "site", "weight", "params", "positions"}
# Schedulable parameters besides the regularizer weights (which are scheduled through their `weight`).
SCHEDULABLE = ("learning_rate", "reconstruction")


@dataclass(frozen=True)
class RegularizerSpec:
    """One anchoring term: ``weight(step) · reduce(loss(activations[site], concept), labels[label])``.

    Args:
        name: unique name used in logs (default ``"<loss>:<concept>"`` or ``"<loss>"``).
        loss: a key of :data:`structured_hf.losses.LOSSES`.
        concept: concept-map entry the loss is about (required for anchors and (anti-)subspaces).
        label: weak label that selects the samples (none: every sample); ``"not:<label>"`` selects the samples
            *without* that label (e.g. keep a reserved axis clear for everything that is not red).
        site: activation site (default: the concept's site; required for concept-free losses).
        weight: constant or keyframed schedule.
        params: extra keyword arguments of the loss (e.g. ``{power: 100.0}`` for angular repulsion).
        positions: for sequence sites ``(B, T, D)``, the token positions the term applies to (default: all tokens
            of a labelled sample).
    """

    name: str
    loss: str
    concept: str | None = None
    label: str | None = None
    site: str | None = None
    weight: Schedule = field(default_factory=lambda: Schedule.constant(1.0))
    params: Mapping[str, Any] = field(default_factory=dict)
    positions: tuple[int, ...] | None = None
    negate_label: bool = False

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], field_name: str) -> RegularizerSpec:
        if isinstance(entry, RegularizerSpec):
            return entry
        check_entry(entry, field_name, _REG_KEYS, "loss/concept/label/weight")
        loss = entry.get("loss")
        if not isinstance(loss, str) or loss not in LOSSES:
            raise StructuredConfigError(f"{field_name}.loss", f"unknown loss {loss!r}; known: {sorted(LOSSES)}")
        info = LOSSES[loss]
        concept = entry.get("concept")
        if info.concept_kind is not None and not isinstance(concept, str):
            raise StructuredConfigError(f"{field_name}.concept", f"loss '{loss}' needs a concept name, got {concept!r}")
        if info.concept_kind is None and concept is not None:
            raise StructuredConfigError(f"{field_name}.concept", f"loss '{loss}' takes no concept, got {concept!r}")
        site = entry.get("site")
        if concept is None and not isinstance(site, str):
            raise StructuredConfigError(f"{field_name}.site", f"loss '{loss}' has no concept, so it needs a site")
        label = entry.get("label")
        if label is not None and not isinstance(label, str):
            raise StructuredConfigError(f"{field_name}.label", f"expected a label name, got {label!r}")
        params = entry.get("params") or {}
        if not isinstance(params, Mapping):
            raise StructuredConfigError(f"{field_name}.params", f"expected a mapping, got {params!r}")
        # Named like the trainer's binding errors: "regularizers[2] ('separate').params".
        check_loss_params(
            f"{field_name} ('{entry.get('name') or (f'{loss}:{concept}' if concept else loss)}').params", loss, params
        )
        negate = isinstance(label, str) and label.startswith("not:")
        if negate:
            label = label[len("not:") :].strip()
            if not label:
                raise StructuredConfigError(f"{field_name}.label", "expected 'not:<label>' with a label name")
        positions = entry.get("positions")
        if positions is not None and (
            not isinstance(positions, (list, tuple))
            or not positions
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in positions)
        ):
            raise StructuredConfigError(
                f"{field_name}.positions", f"expected a list of token positions, got {positions!r}"
            )
        name = entry.get("name") or (f"{loss}:{concept}" if concept else loss)
        check_name(f"{field_name}.name", name)
        weight = parse_schedule(entry.get("weight", 1.0), f"{field_name}.weight")
        check_non_negative(weight, f"{field_name}.weight")
        return cls(
            name=name,
            loss=loss,
            concept=concept,
            label=label,
            site=site,
            weight=weight,
            params=dict(params),
            positions=None if positions is None else tuple(positions),
            negate_label=negate,
        )

    def to_dict(self) -> dict[str, Any]:
        """The YAML form :meth:`from_dict` reads back to an equal spec (defaults left out)."""
        out: dict[str, Any] = {"name": self.name, "loss": self.loss}
        if self.concept is not None:
            out["concept"] = self.concept
        if self.label is not None:
            out["label"] = f"not:{self.label}" if self.negate_label else self.label
        if self.site is not None:
            out["site"] = self.site
        out["weight"] = self.weight.to_dict()
        if self.params:
            out["params"] = dict(self.params)
        if self.positions is not None:
            out["positions"] = list(self.positions)
        return out


def parse_regularizers(entries: Any, field_name: str = "regularizers") -> list[RegularizerSpec]:
    return parse_spec_list(entries, field_name, RegularizerSpec.from_dict, "regularizer")


def parse_schedules(spec: Any, field_name: str = "schedules") -> dict[str, Schedule]:
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise StructuredConfigError(field_name, f"expected a mapping of parameter -> schedule, got {spec!r}")
    out = {}
    for key, value in spec.items():
        if key not in SCHEDULABLE:
            raise StructuredConfigError(
                f"{field_name}.{key}",
                f"unknown parameter; schedulable: {list(SCHEDULABLE)} (regularizer weights go in their `weight`)",
            )
        if isinstance(value, Schedule):  # parsed already (a recipe's specs)
            out[key] = value
            continue
        out[key] = parse_schedule(value, f"{field_name}.{key}")
        check_non_negative(out[key], f"{field_name}.{key}")
    return out


def check_non_negative(schedule: Schedule, field_name: str) -> None:
    """Weights and learning rates are >= 0 at every key: a negative one trains by gradient ascent on its term."""
    for i, value in enumerate(schedule.values):
        if value < 0:
            where = field_name if len(schedule.values) == 1 else f"{field_name}.keys[{i}]"
            raise StructuredConfigError(
                where,
                f"expected a value >= 0, got {value}; a negative weight or learning rate trains by gradient ascent",
            )


def parse_reactive(entries: Any, field_name: str = "reactive") -> list[ReactiveRule]:
    if entries is None:
        return []
    if not isinstance(entries, (list, tuple)):
        raise StructuredConfigError(field_name, f"expected a list of rules, got {type(entries).__name__}")
    return [
        e if isinstance(e, ReactiveRule) else ReactiveRule.from_dict(e, f"{field_name}[{i}]")
        for i, e in enumerate(entries)
    ]


@dataclass
class AnchoredTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the anchoring recipe.

    Args:
        regularizers: regularizer specs (:class:`RegularizerSpec`, or their dicts); typed specs after construction.
        schedules: ``{parameter: schedule}`` for ``learning_rate`` and ``reconstruction`` (the task-loss weight), as
            :class:`~structured_hf.schedules.Schedule` or YAML values.
        reactive: reactive rules (:class:`~structured_hf.training.transitions.ReactiveRule`, or their dicts): when a
            logged metric crosses a threshold, a regularizer weight (or ``reconstruction``) moves smoothly to a target.
        sample_with_replacement: draw training samples with replacement (weighted by a ``sample_weight`` column if
            the dataset has one), as the color experiments do.
        check_finite: stop with an error naming the term as soon as any loss term is NaN/inf.
        routes: gradient routes (:class:`~structured_hf.training.routing.RouteSpec`, or their dicts): labelled
            samples learn upstream of a site only through a concept's reserved axes.
    """

    regularizers: list = field(default_factory=list)
    schedules: dict = field(default_factory=dict)
    reactive: list = field(default_factory=list)
    routes: list = field(default_factory=list)
    sample_with_replacement: bool = False
    check_finite: bool = True
    # Batches are dicts of tensors built by our collators, not per-row dicts: Trainer's column removal does not apply.
    remove_unused_columns: bool = False
    prediction_loss_only: bool = True
    report_to: Any = "none"

    def __post_init__(self):
        if not self.use_cpu and _multi_process_launch_without_accelerator():
            # accelerate's multi-GPU launcher (the one that starts several CPU processes, see
            # configs/accelerate/cpu_2proc.yaml) does not tell the processes to use the CPU, and without an
            # accelerator transformers then builds a non-distributed state in every process: N independent runs,
            # each believing it is rank 0 and writing the same output folder. Ask for the CPU (gloo) instead.
            self.use_cpu = True
        super().__post_init__()
        # The fields hold typed specs from here on. A recipe passes the specs it parsed at load (they pass through
        # unchanged); dicts written by hand are parsed here, once.
        self.regularizers = parse_regularizers(self.regularizers)
        self.schedules = parse_schedules(self.schedules)
        self.reactive = parse_reactive(self.reactive)
        self.routes = parse_routes(self.routes)
        check_spec_names(self.regularizers, self.routes, self.reactive)

    # Before the fields held typed specs, the parsed forms had names of their own; kept one release, with a warning.
    regularizer_specs = property(lambda self: _renamed(self, "regularizer_specs", "regularizers"))
    route_specs = property(lambda self: _renamed(self, "route_specs", "routes"))
    parameter_schedules = property(lambda self: _renamed(self, "parameter_schedules", "schedules"))
    reactive_rules = property(lambda self: _renamed(self, "reactive_rules", "reactive"))

    def to_dict(self) -> dict[str, Any]:
        """TrainingArguments' dict (logged by integrations, printed by ``str(args)``) with the specs in YAML form."""
        out = super().to_dict()
        out["regularizers"] = [r.to_dict() for r in self.regularizers]
        out["routes"] = [r.to_dict() for r in self.routes]
        out["schedules"] = {k: v.to_dict() for k, v in self.schedules.items()}
        out["reactive"] = [r.to_dict() for r in self.reactive]
        return out


def _renamed(args: AnchoredTrainingArguments, old: str, new: str) -> Any:
    warnings.warn(
        f"AnchoredTrainingArguments.{old} is deprecated: the `{new}` field holds the parsed specs now",
        FutureWarning,
        stacklevel=3,
    )
    return getattr(args, new)


def check_spec_names(
    regularizers: Sequence[RegularizerSpec], routes: Sequence[RouteSpec], reactive: Sequence[ReactiveRule]
) -> None:
    """Routes and regularizers share one namespace (schedules and logs address both by name), and a reactive rule
    can only move a parameter that exists."""
    clash = {r.name for r in routes} & {r.name for r in regularizers}
    if clash:
        raise StructuredConfigError("routes", f"names {sorted(clash)} are taken by regularizers; set `name`")
    known = {r.name for r in regularizers} | {"reconstruction"}
    for i, rule in enumerate(reactive):
        if rule.parameter not in known:
            raise StructuredConfigError(
                f"reactive[{i}].parameter",
                f"unknown parameter '{rule.parameter}'; reactive rules can move {sorted(known)}",
            )


def _multi_process_launch_without_accelerator() -> bool:
    """True inside a multi-process launch (``WORLD_SIZE`` > 1) on a machine with no GPU or other accelerator."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return False
    if world_size <= 1:
        return False
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return not accelerator.is_available()
    return not torch.cuda.is_available()
