"""The concept map: where each concept lives, decided before training.

A concept is ``{name, site, direction | axes}``:

- ``direction``: a vector in the site's activation space (e.g. red at ``[1, 0, 0, 0]`` of the bottleneck);
- ``axes``: a set of coordinate axes of the site (e.g. the hue plane ``[0, 1]``).

An optional ``prototypes`` list names inputs that embody the concept (for colors: named colors or RGB triples);
evaluation measures the concept at those inputs. The map is stored in every model's ``config.concepts`` as plain
dicts, so it travels with ``config.json``; this module turns those dicts into validated :class:`ConceptSpec` objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import StructuredConfigError
from .validation import check_axes, check_keys

_KNOWN_KEYS = {"name", "site", "direction", "axes", "prototypes", "description"}


@dataclass(frozen=True)
class ConceptSpec:
    """One entry of the concept map.

    Args:
        name: unique concept name, used to address it from regularizers and interventions.
        site: name of the activation site the concept lives in (see :mod:`structured_hf.sites`).
        direction: the concept's vector at ``site``; exactly one of ``direction`` and ``axes`` is set.
        axes: the coordinate axes of ``site`` reserved for the concept.
        prototypes: inputs that embody the concept, used by evaluation (free-form, JSON-serializable).
        description: human-readable note, shown in model cards.
    """

    name: str
    site: str
    direction: tuple[float, ...] | None = None
    axes: tuple[int, ...] | None = None
    prototypes: tuple[Any, ...] = ()
    description: str = ""

    @property
    def kind(self) -> str:
        return "direction" if self.direction is not None else "axes"

    def unit_direction(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The direction scaled to unit length (angular losses and interventions only care about the angle)."""
        if self.direction is None:
            raise StructuredConfigError(f"concepts.{self.name}", "is an axes concept; it has no direction")
        v = torch.tensor(self.direction, dtype=dtype, device=device)
        return v / v.norm()

    def vector(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """The direction exactly as written (the euclidean anchor's target point)."""
        if self.direction is None:
            raise StructuredConfigError(f"concepts.{self.name}", "is an axes concept; it has no direction")
        return torch.tensor(self.direction, dtype=dtype, device=device)

    def axis_mask(self, width: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean mask of length ``width``, true on the concept's axes."""
        if self.axes is None:
            raise StructuredConfigError(f"concepts.{self.name}", "is a direction concept; it has no axes")
        mask = torch.zeros(width, dtype=torch.bool, device=device)
        mask[list(self.axes)] = True
        return mask

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "site": self.site}
        if self.direction is not None:
            out["direction"] = list(self.direction)
        if self.axes is not None:
            out["axes"] = list(self.axes)
        if self.prototypes:
            out["prototypes"] = [list(p) if isinstance(p, tuple) else p for p in self.prototypes]
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], field: str = "concept") -> ConceptSpec:
        """Parse one concept-map entry, raising :class:`StructuredConfigError` that names ``field`` on any problem."""
        if isinstance(entry, ConceptSpec):
            return entry
        if not isinstance(entry, Mapping):
            raise StructuredConfigError(field, f"expected a mapping with keys name/site/direction|axes, got {entry!r}")
        check_keys(field, entry, _KNOWN_KEYS)
        name, site = entry.get("name"), entry.get("site")
        if not isinstance(name, str) or not name:
            raise StructuredConfigError(f"{field}.name", f"expected a non-empty string, got {name!r}")
        if not isinstance(site, str) or not site:
            raise StructuredConfigError(f"{field}.site", f"expected a non-empty site name, got {site!r}")
        direction, axes = entry.get("direction"), entry.get("axes")
        if (direction is None) == (axes is None):
            raise StructuredConfigError(field, f"concept '{name}' needs exactly one of 'direction' or 'axes'")
        parsed_direction = _parse_direction(direction, f"{field}.direction") if direction is not None else None
        parsed_axes = check_axes(f"{field}.axes", axes) if axes is not None else None
        prototypes = entry.get("prototypes") or ()
        if not isinstance(prototypes, (list, tuple)):
            raise StructuredConfigError(f"{field}.prototypes", f"expected a list, got {prototypes!r}")
        return cls(
            name=name,
            site=site,
            direction=parsed_direction,
            axes=parsed_axes,
            prototypes=tuple(tuple(p) if isinstance(p, list) else p for p in prototypes),
            description=str(entry.get("description", "")),
        )


def _parse_direction(value: Any, field: str) -> tuple[float, ...]:
    if isinstance(value, Mapping):
        # Shorthand for wide sites: {one_hot: 0, width: 64} is the unit vector along axis 0 of a 64-wide site;
        # {one_hot: [0, 1, 2, 3], width: 64} is the diagonal of those axes (equal weights; angular losses and
        # interventions normalise it), for a concept spread over a block of reserved axes.
        if set(value) != {"one_hot", "width"}:
            raise StructuredConfigError(
                field, f"a mapping direction is {{one_hot: AXIS or [AXES], width: N}}, got {dict(value)!r}"
            )
        axes, width = value["one_hot"], value["width"]
        axes = [axes] if not isinstance(axes, (list, tuple)) else list(axes)
        if (
            not axes
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in [*axes, width])
            or not all(0 <= a < width for a in axes)
            or len(set(axes)) != len(axes)
        ):
            raise StructuredConfigError(field, f"expected distinct integers 0 <= one_hot < width, got {dict(value)!r}")
        return tuple(1.0 if i in axes else 0.0 for i in range(width))
    if not isinstance(value, (list, tuple)) or not value:
        raise StructuredConfigError(field, f"expected a non-empty list of numbers, got {value!r}")
    out = []
    for i, x in enumerate(value):
        # YAML reads `1e-4` (no dot) as a string; name that explicitly because it is the usual cause.
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise StructuredConfigError(f"{field}[{i}]", f"expected a number, got {x!r} ({type(x).__name__})")
        if not math.isfinite(x):
            raise StructuredConfigError(f"{field}[{i}]", f"expected a finite number, got {x!r}")
        out.append(float(x))
    # Check the length as the losses will compute it (float32): a norm that under- or overflows there would turn
    # every angular loss into NaN.
    # (NumPy, not torch: this also runs inside from_pretrained's meta-device context.)
    with np.errstate(over="ignore", under="ignore"):
        norm = float(np.linalg.norm(np.asarray(out, dtype=np.float32)))
    if norm == 0.0:
        raise StructuredConfigError(field, "is the zero vector; a concept direction must have non-zero length")
    if not math.isfinite(norm) or norm < 1e-12:
        raise StructuredConfigError(field, f"has length {norm:g}, outside float32's usable range; rescale it")
    return tuple(out)


class ConceptMap(Sequence[ConceptSpec]):
    """An ordered, name-addressable list of concepts.

    ``ConceptMap.of(model)`` is the one way to read a model's map (``model.concept_map`` on structured_hf models
    calls it); ``concept_map["red"]`` raises an error listing the known names when the concept does not exist.
    """

    def __init__(self, concepts: Iterable[ConceptSpec] = ()):
        self._concepts = list(concepts)
        seen: set[str] = set()
        for i, c in enumerate(self._concepts):
            if c.name in seen:
                raise StructuredConfigError(f"concepts[{i}].name", f"duplicate concept name '{c.name}'")
            seen.add(c.name)

    @classmethod
    def parse(cls, entries: Iterable[Mapping[str, Any] | ConceptSpec] | None, field: str = "concepts") -> ConceptMap:
        if entries is None:
            return cls()
        if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Iterable):
            raise StructuredConfigError(field, f"expected a list of concept entries, got {type(entries).__name__}")
        return cls(ConceptSpec.from_dict(e, f"{field}[{i}]") for i, e in enumerate(entries))

    @classmethod
    def of(cls, model_or_config: Any) -> ConceptMap:
        """The concept map of a model or of its config: structured_hf's models and pretrained models with attached
        sites alike (their ``config.concepts``, which surgery keeps current); empty when the config has none.

        Read the map through this at the moment it is needed rather than keeping one: surgery rewrites the
        config's list, and a kept map would go stale.
        """
        config = getattr(model_or_config, "config", model_or_config)
        return cls.parse(getattr(config, "concepts", None), "config.concepts")

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            for c in self._concepts:
                if c.name == key:
                    return c
            raise StructuredConfigError("concept", f"unknown concept '{key}'; the concept map has {self.names}")
        return self._concepts[key]

    def __len__(self) -> int:
        return len(self._concepts)

    def __iter__(self) -> Iterator[ConceptSpec]:
        return iter(self._concepts)

    def __contains__(self, name: object) -> bool:
        return any(c.name == name for c in self._concepts)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self._concepts]

    def to_list(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self._concepts]

    def validate(self, site_dims: Mapping[str, int]) -> ConceptMap:
        """Check every concept against a model's sites: the site exists and the direction/axes fit its width."""
        for i, c in enumerate(self._concepts):
            field = f"concepts[{i}] ('{c.name}')"
            if c.site not in site_dims:
                raise StructuredConfigError(
                    f"{field}.site", f"unknown site '{c.site}'; the model has {sorted(site_dims)}"
                )
            width = site_dims[c.site]
            if c.direction is not None and len(c.direction) != width:
                raise StructuredConfigError(
                    f"{field}.direction",
                    f"has length {len(c.direction)} but site '{c.site}' has width {width}",
                )
            if c.axes is not None and max(c.axes) >= width:
                raise StructuredConfigError(
                    f"{field}.axes", f"axis {max(c.axes)} is out of range for site '{c.site}' of width {width}"
                )
        return self
