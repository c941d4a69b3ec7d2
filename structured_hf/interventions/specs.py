"""Serializable descriptions of interventions and surgery, so a run can be replayed or shipped with a checkpoint.

An :class:`InterventionSpec` names an inference-time rewrite of one site (``suppress``, ``repel`` or ``axes``); a
:class:`SurgerySpec` names a weight edit (``ablate`` or ``prune``). Both round-trip through JSON (``to_dict`` /
``from_dict``) and through a compact command-line form (``to_string`` / :func:`parse_spec`)::

    suppress:red                         hard hemisphere suppression of concept 'red' (a=0, b=1, p=0)
    suppress:red:a=0.1,b=1.0,p=2.0       with a bounded power falloff
    repel:red                            repulsion with the default Bézier mapper (0 -> 0, slope 1; 1 -> 0, slope 0)
    repel:red:mapper=linear,a=0.0,b=-0.5
    suppress:[1,0,0,0]@bottleneck        an explicit vector at a site
    axes:0,1                             zero axes 0 and 1 of the default site; axes:0,1@encoder names the site
    axes:hue                             zero the axes of a concept (a direction concept: its nonzero axes)
    ablate:red   prune:red   prune:0@bottleneck   prune:red:heal=200

A JSON object (``{"kind": "suppress", "concept": "red"}``) is accepted wherever a string is.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StructuredConfigError
from ..validation import check_axes, check_keys
from .falloff import BezierMapper, BoundedPowerFalloff, LinearMapper, falloff_from_dict, mapper_from_dict

INTERVENTION_KINDS = ("suppress", "repel", "axes")
SURGERY_KINDS = ("ablate", "prune")
_TARGET = re.compile(r"^(?P<target>[^@]*)(?:@(?P<site>[A-Za-z0-9_.\-]+))?$")


def default_mapper() -> BezierMapper:
    """Repulsion's default: identity-like near the hemisphere boundary (slope 1), concept sent to the equator."""
    return BezierMapper(a=0.0, b=0.0, start_slope=1.0, end_slope=0.0)


def _vector(value: Any, field_name: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise StructuredConfigError(field_name, f"expected a non-empty list of numbers, got {value!r}")
    out = []
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise StructuredConfigError(f"{field_name}[{i}]", f"expected a finite number, got {x!r}")
        out.append(float(x))
    if not any(out):
        raise StructuredConfigError(field_name, "is the zero vector; an intervention needs a direction")
    return tuple(out)


def _optional_str(value: Any, field_name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise StructuredConfigError(field_name, f"expected a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True)
class InterventionSpec:
    """An inference-time intervention on one site.

    Exactly one target: ``concept`` (a name in ``model.config.concepts``), ``vector`` (with ``site``, for
    ``suppress``/``repel``) or ``axes`` (for ``axes``).

    Args:
        kind: ``suppress`` (remove the component along the concept, scaled by the falloff), ``repel`` (rotate toward
            the equator by the mapper) or ``axes`` (zero the axes).
        concept: concept name; its site is used unless ``site`` is given.
        site: site name (required with ``vector``; optional with ``axes``: defaults to the model's concept site).
        vector: explicit direction at ``site`` (normalized when applied).
        axes: explicit axes at ``site``.
        falloff: suppression falloff (default: hard hemisphere removal).
        mapper: repulsion mapper (default: :func:`default_mapper`).
    """

    kind: str
    concept: str | None = None
    site: str | None = None
    vector: tuple[float, ...] | None = None
    axes: tuple[int, ...] | None = None
    falloff: BoundedPowerFalloff | None = None
    mapper: LinearMapper | BezierMapper | None = None

    def __post_init__(self) -> None:
        if self.kind not in INTERVENTION_KINDS:
            raise StructuredConfigError("intervention.kind", f"expected one of {INTERVENTION_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "concept", _optional_str(self.concept, "intervention.concept"))
        object.__setattr__(self, "site", _optional_str(self.site, "intervention.site"))
        if self.vector is not None:
            object.__setattr__(self, "vector", _vector(self.vector, "intervention.vector"))
        if self.axes is not None:
            object.__setattr__(self, "axes", check_axes("intervention.axes", self.axes))
        targets = [name for name in ("concept", "vector", "axes") if getattr(self, name) is not None]
        if len(targets) != 1:
            raise StructuredConfigError(
                "intervention", f"'{self.kind}' needs exactly one of concept, vector, axes; got {targets or 'none'}"
            )
        if self.kind == "axes" and self.vector is not None:
            raise StructuredConfigError(
                "intervention.vector", "'axes' zeroes axes; give axes or a concept, not a vector"
            )
        if self.kind != "axes" and self.axes is not None:
            raise StructuredConfigError(
                "intervention.axes",
                f"'{self.kind}' needs a direction (concept or vector); to zero axes use kind 'axes'",
            )
        if self.vector is not None and self.site is None:
            raise StructuredConfigError("intervention.site", "an explicit vector needs the site it lives in")
        if self.falloff is not None:
            if self.kind != "suppress":
                raise StructuredConfigError(
                    "intervention.falloff", f"only 'suppress' takes a falloff, not '{self.kind}'"
                )
            object.__setattr__(self, "falloff", falloff_from_dict(self.falloff, "intervention.falloff"))
        if self.mapper is not None:
            if self.kind != "repel":
                raise StructuredConfigError("intervention.mapper", f"only 'repel' takes a mapper, not '{self.kind}'")
            object.__setattr__(self, "mapper", mapper_from_dict(self.mapper, "intervention.mapper"))

    @property
    def resolved_falloff(self) -> BoundedPowerFalloff:
        return self.falloff or BoundedPowerFalloff()

    @property
    def resolved_mapper(self) -> LinearMapper | BezierMapper:
        return self.mapper or default_mapper()

    # ---- JSON ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for name in ("concept", "site"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.vector is not None:
            out["vector"] = list(self.vector)
        if self.axes is not None:
            out["axes"] = list(self.axes)
        if self.falloff is not None:
            out["falloff"] = self.falloff.to_dict()
        if self.mapper is not None:
            out["mapper"] = self.mapper.to_dict()
        return out

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], field_name: str = "intervention") -> InterventionSpec:
        if isinstance(entry, InterventionSpec):
            return entry
        if not isinstance(entry, Mapping):
            raise StructuredConfigError(field_name, f"expected a mapping with kind/concept|vector|axes, got {entry!r}")
        check_keys(field_name, entry, {"kind", "concept", "site", "vector", "axes", "falloff", "mapper"})
        try:
            return cls(**dict(entry))
        except StructuredConfigError as e:
            if field_name == "intervention":
                raise
            raise StructuredConfigError(field_name, str(e)) from None  # name the entry of a file or list

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    # ---- command line -------------------------------------------------------------------------------------------
    def to_string(self) -> str:
        """The compact form; ``parse_spec(spec.to_string()) == spec``."""
        params: dict[str, Any] = {}
        if self.falloff is not None:
            params = {k: v for k, v in self.falloff.to_dict().items() if k != "type"}
        if self.mapper is not None:
            params = {"mapper": self.mapper.type, **{k: v for k, v in self.mapper.to_dict().items() if k != "type"}}
        return _compose(self.kind, self.concept, self.vector, self.axes, self.site, params)

    def __str__(self) -> str:
        return self.to_string()


@dataclass(frozen=True)
class SurgerySpec:
    """A weight edit that deletes a concept's axes (see :mod:`structured_hf.interventions.surgery`).

    Args:
        kind: ``ablate`` (zero the axes' producing rows and consuming columns; same width) or ``prune`` (remove them).
        concept: concept whose axes are deleted (a direction concept: its nonzero axes).
        axes: explicit axes instead of a concept.
        site: the site the axes belong to (default: the concept's site).
        heal_steps: if > 0, run :func:`~structured_hf.interventions.surgery.heal` for this many steps afterwards.
    """

    kind: str
    concept: str | None = None
    axes: tuple[int, ...] | None = None
    site: str | None = None
    heal_steps: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SURGERY_KINDS:
            raise StructuredConfigError("surgery.kind", f"expected one of {SURGERY_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "concept", _optional_str(self.concept, "surgery.concept"))
        object.__setattr__(self, "site", _optional_str(self.site, "surgery.site"))
        if self.axes is not None:
            object.__setattr__(self, "axes", check_axes("surgery.axes", self.axes))
        if (self.concept is None) == (self.axes is None):
            raise StructuredConfigError("surgery", f"'{self.kind}' needs exactly one of concept or axes")
        if isinstance(self.heal_steps, bool) or not isinstance(self.heal_steps, int) or self.heal_steps < 0:
            raise StructuredConfigError(
                "surgery.heal_steps", f"expected a non-negative integer, got {self.heal_steps!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.concept is not None:
            out["concept"] = self.concept
        if self.axes is not None:
            out["axes"] = list(self.axes)
        if self.site is not None:
            out["site"] = self.site
        if self.heal_steps:
            out["heal_steps"] = self.heal_steps
        return out

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], field_name: str = "surgery") -> SurgerySpec:
        if isinstance(entry, SurgerySpec):
            return entry
        if not isinstance(entry, Mapping):
            raise StructuredConfigError(field_name, f"expected a mapping with kind/concept|axes, got {entry!r}")
        check_keys(field_name, entry, {"kind", "concept", "axes", "site", "heal_steps"})
        try:
            return cls(**dict(entry))
        except StructuredConfigError as e:
            if field_name == "surgery":
                raise
            raise StructuredConfigError(field_name, str(e)) from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_string(self) -> str:
        params = {"heal": self.heal_steps} if self.heal_steps else {}
        return _compose(self.kind, self.concept, None, self.axes, self.site, params)

    def __str__(self) -> str:
        return self.to_string()


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _compose(
    kind: str,
    concept: str | None,
    vector: tuple[float, ...] | None,
    axes: tuple[int, ...] | None,
    site: str | None,
    params: Mapping[str, Any],
) -> str:
    if concept is not None:
        target = concept
    elif vector is not None:
        target = "[" + ",".join(_fmt(x) for x in vector) + "]"
    else:
        target = ",".join(str(a) for a in axes or ())
    text = f"{kind}:{target}" + (f"@{site}" if site else "")
    if params:
        text += ":" + ",".join(f"{k}={_fmt(v)}" for k, v in params.items())
    return text


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # bare words: mapper=bezier


def parse_spec(text: str | Mapping[str, Any] | InterventionSpec | SurgerySpec) -> InterventionSpec | SurgerySpec:
    """Parse the compact command-line form (module docstring) or a JSON object into a spec."""
    if isinstance(text, (InterventionSpec, SurgerySpec)):
        return text
    if isinstance(text, Mapping):
        kind = text.get("kind")
        return (SurgerySpec if kind in SURGERY_KINDS else InterventionSpec).from_dict(text)
    if not isinstance(text, str) or not text.strip():
        raise StructuredConfigError("intervention", f"expected a spec string such as 'suppress:red', got {text!r}")
    text = text.strip()
    if text.startswith("{"):
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as e:
            raise StructuredConfigError("intervention", f"malformed JSON spec {text!r}: {e}") from None
        return parse_spec(entry)
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise StructuredConfigError("intervention", f"expected KIND:TARGET[@SITE][:KEY=VALUE,...], got {text!r}")
    if kind not in INTERVENTION_KINDS + SURGERY_KINDS:
        raise StructuredConfigError(
            "intervention", f"unknown kind {kind!r} in {text!r}; known: {list(INTERVENTION_KINDS + SURGERY_KINDS)}"
        )
    # The target may be a bracketed vector containing commas; params follow the first ':' after it.
    close = rest.find("]") if rest.startswith("[") else -1
    split_at = rest.find(":", close + 1)
    target_text, params_text = (rest, "") if split_at < 0 else (rest[:split_at], rest[split_at + 1 :])
    match = _TARGET.match(target_text)
    if not match or not match.group("target"):
        raise StructuredConfigError("intervention", f"cannot read the target of {text!r}")
    target, site = match.group("target"), match.group("site")
    params: dict[str, Any] = {}
    for item in filter(None, params_text.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise StructuredConfigError("intervention", f"expected KEY=VALUE in {text!r}, got {item!r}")
        params[key.strip()] = _parse_value(value.strip())

    concept = vector = axes = None
    if target.startswith("["):
        try:
            vector = json.loads(target)
        except json.JSONDecodeError:
            raise StructuredConfigError("intervention", f"malformed vector {target!r} in {text!r}") from None
    elif re.fullmatch(r"\d+(,\d+)*", target):
        axes = [int(a) for a in target.split(",")]
    elif re.fullmatch(r"[-+\d,\s.]+", target):
        # Looks like axis indices but is not a list of non-negative integers ("-1", "0,,1", "1.5"): say so, instead
        # of reporting an unknown concept named "-1".
        raise StructuredConfigError(
            "intervention", f"axes must be non-negative integers separated by commas, got {target!r} in {text!r}"
        )
    else:
        concept = target

    if kind in SURGERY_KINDS:
        unknown = set(params) - {"heal"}
        if unknown:
            raise StructuredConfigError("surgery", f"unknown options {sorted(unknown)} in {text!r}; allowed: heal")
        if vector is not None:
            raise StructuredConfigError("surgery", f"'{kind}' deletes axes; give a concept or axes, not a vector")
        return SurgerySpec(kind=kind, concept=concept, axes=axes, site=site, heal_steps=params.get("heal", 0))
    falloff = mapper = None
    if kind == "suppress" and params:
        # `width=DEG` sets the concept's angular width (AngularFalloff); a/b/p alone the bounded power falloff.
        kind_of_falloff = "angular" if "width" in params else "power"
        falloff = falloff_from_dict({"type": kind_of_falloff, **params}, "intervention.falloff")
    elif kind == "repel" and params:
        mapper = mapper_from_dict({"type": params.pop("mapper", "bezier"), **params}, "intervention.mapper")
    elif params:
        raise StructuredConfigError("intervention", f"'{kind}' takes no options, got {sorted(params)} in {text!r}")
    if kind == "axes" and concept is None and axes is None:
        raise StructuredConfigError("intervention", f"'axes' needs axes or a concept, got {target!r}")
    return InterventionSpec(
        kind=kind, concept=concept, site=site, vector=vector, axes=axes, falloff=falloff, mapper=mapper
    )


def spec_from_json(text: str) -> InterventionSpec | SurgerySpec:
    """Inverse of ``spec.to_json()``."""
    try:
        entry = json.loads(text)
    except json.JSONDecodeError as e:
        raise StructuredConfigError("intervention", f"malformed JSON: {e}") from None
    return parse_spec(entry)


INTERVENTIONS_FILE = "interventions.json"


def save_specs(specs: Sequence[Any], folder: str | Path, filename: str = INTERVENTIONS_FILE) -> Path:
    """Write specs as ``{"interventions": [spec dicts]}`` next to a checkpoint, so the evaluated interventions ship
    with it (``load_specs`` reads them back)."""
    path = Path(folder) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"interventions": [parse_spec(s).to_dict() for s in specs]}, indent=2))
    return path


def load_specs(folder: str | Path, filename: str = INTERVENTIONS_FILE) -> list[InterventionSpec | SurgerySpec]:
    """Read the specs written by :func:`save_specs` (errors name the file and the entry)."""
    path = Path(folder) / filename
    try:
        entries = json.loads(path.read_text())["interventions"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise StructuredConfigError(str(path), f"cannot read interventions: {e}") from None
    if not isinstance(entries, list):
        raise StructuredConfigError(f"{path}:interventions", f"expected a list, got {type(entries).__name__}")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise StructuredConfigError(f"{path}:interventions[{i}]", f"expected a mapping, got {entry!r}")
        cls = SurgerySpec if entry.get("kind") in SURGERY_KINDS else InterventionSpec
        out.append(cls.from_dict(entry, f"{path}:interventions[{i}]"))
    return out


__all__ = [
    "INTERVENTIONS_FILE",
    "INTERVENTION_KINDS",
    "InterventionSpec",
    "SURGERY_KINDS",
    "SurgerySpec",
    "default_mapper",
    "load_specs",
    "parse_spec",
    "save_specs",
    "spec_from_json",
]
