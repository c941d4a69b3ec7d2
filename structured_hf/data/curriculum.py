"""Curricula for color data (1.3, 1.5, 1.6 in docs/m1-experiments.md): which colors may be sampled at each step.

Two ways, combinable, both on one timeline of optimizer steps:

- **phases** (stepped): from a step on, only colors passing the phase's filter are drawn, e.g. the 6
  primary/secondary hues -> all hues -> all values -> the full cube;
- **vibrancy_min** (smooth): a schedule of the smallest vibrancy (s·v) that may be drawn; lowering it from 1 to 0
  widens the data from the pure hues to everything.

The sampler is a pure function of (seed, epoch, position in the stream): sample ``i`` belongs to optimizer step
``i // samples_per_step``, so resumed runs (which skip batches by position) and multi-process runs (which deal
batches round-robin) see exactly the data of an uninterrupted single-process run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import StructuredConfigError
from ..validation import check_keys
from ..schedules import Schedule, parse_schedule, parse_step
from .colors import to_hsv

_PHASE_KEYS = {"start", "name", "hues", "saturation", "value", "hue_tolerance"}


@dataclass(frozen=True)
class DataPhase:
    """Colors allowed from step ``start`` on: hue in ``hues`` (degrees, ± tolerance; all when None), saturation and
    value within their closed ranges."""

    start: float
    name: str
    hues: tuple[float, ...] | None = None
    saturation: tuple[float, float] = (0.0, 1.0)
    value: tuple[float, float] = (0.0, 1.0)
    hue_tolerance: float = 1.0

    def mask(self, hsv: np.ndarray) -> np.ndarray:
        ok = (hsv[:, 1] >= self.saturation[0] - 1e-9) & (hsv[:, 1] <= self.saturation[1] + 1e-9)
        ok &= (hsv[:, 2] >= self.value[0] - 1e-9) & (hsv[:, 2] <= self.value[1] + 1e-9)
        if self.hues is not None:
            deg = hsv[:, 0] * 360.0
            dist = np.abs((deg[:, None] - np.asarray(self.hues)[None, :] + 180.0) % 360.0 - 180.0)
            ok &= (dist <= self.hue_tolerance).any(-1)
        return ok


def _range(value: Any, field: str) -> tuple[float, float]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
    ):
        raise StructuredConfigError(field, f"expected [low, high] numbers, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not 0.0 <= lo <= hi <= 1.0:
        raise StructuredConfigError(field, f"expected 0 <= low <= high <= 1, got {value!r}")
    return lo, hi


@dataclass(frozen=True)
class Curriculum:
    """Phases and/or a vibrancy floor over steps (see module docstring)."""

    phases: tuple[DataPhase, ...] = ()
    vibrancy_min: Schedule | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | None, field: str = "data.curriculum") -> Curriculum | None:
        if spec is None:
            return None
        if not isinstance(spec, Mapping):
            raise StructuredConfigError(field, f"expected a mapping with phases and/or vibrancy_min, got {spec!r}")
        check_keys(field, spec, {"phases", "vibrancy_min"})
        phases: list[DataPhase] = []
        for i, entry in enumerate(spec.get("phases") or []):
            pf = f"{field}.phases[{i}]"
            if not isinstance(entry, Mapping):
                raise StructuredConfigError(pf, f"expected a mapping, got {entry!r}")
            check_keys(pf, entry, _PHASE_KEYS)
            start = parse_step(entry.get("start", 0), phases[-1].start if phases else None, f"{pf}.start")
            if phases and start <= phases[-1].start:
                raise StructuredConfigError(
                    f"{pf}.start", f"phases must start in order, got {start} after {phases[-1].start}"
                )
            hues = entry.get("hues")
            if hues is not None and (
                not isinstance(hues, Sequence)
                or isinstance(hues, str)
                or not all(isinstance(h, (int, float)) for h in hues)
            ):
                raise StructuredConfigError(f"{pf}.hues", f"expected a list of hue angles in degrees, got {hues!r}")
            phases.append(
                DataPhase(
                    start=start,
                    name=str(entry.get("name", f"phase{i}")),
                    hues=None if hues is None else tuple(float(h) for h in hues),
                    saturation=_range(entry.get("saturation", [0.0, 1.0]), f"{pf}.saturation"),
                    value=_range(entry.get("value", [0.0, 1.0]), f"{pf}.value"),
                    hue_tolerance=float(entry.get("hue_tolerance", 1.0)),
                )
            )
        if phases and phases[0].start != 0:
            raise StructuredConfigError(f"{field}.phases[0].start", "the first phase must start at step 0")
        floor = spec.get("vibrancy_min")
        return cls(tuple(phases), None if floor is None else parse_schedule(floor, f"{field}.vibrancy_min"))

    def phase_at(self, step: float) -> DataPhase | None:
        current = None
        for phase in self.phases:
            if phase.start <= step:
                current = phase
        return current

    def boundaries(self) -> list[tuple[float, str]]:
        """(start step, name) of every phase, for plots and stability metrics."""
        return [(p.start, p.name) for p in self.phases]


class CurriculumSampler(Sampler[int]):
    """Draws ``samples_per_step`` indices per optimizer step, with replacement, from the colors the curriculum allows
    at that step (weighted by ``weights`` where given).

    Args:
        colors: RGB (N, 3) of the dataset rows.
        curriculum: the phases / vibrancy floor.
        samples_per_step: global batch (per-device batch × accumulation × processes).
        num_steps: steps per epoch.
        weights: per-row sampling weights (e.g. HSV equal-distinct-color weights).
        seed: base seed.
    """

    def __init__(
        self,
        colors: np.ndarray,
        curriculum: Curriculum,
        samples_per_step: int,
        num_steps: int,
        weights: np.ndarray | None = None,
        seed: int = 0,
    ):
        self.hsv = to_hsv(np.asarray(colors, dtype=np.float64))
        self.vibrancy = self.hsv[:, 1] * self.hsv[:, 2]
        self.curriculum = curriculum
        self.samples_per_step = samples_per_step
        self.num_steps = num_steps
        self.weights = np.ones(len(self.hsv)) if weights is None else np.asarray(weights, dtype=np.float64)
        self.seed = seed
        self.epoch = 0
        self._mask_cache: dict[tuple, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_step * self.num_steps

    def eligible(self, step: int) -> np.ndarray:
        """Boolean mask of the rows that may be drawn at ``step``."""
        phase = self.curriculum.phase_at(step)
        floor = self.curriculum.vibrancy_min(step) if self.curriculum.vibrancy_min is not None else None
        key = (phase, None if floor is None else round(floor, 6))
        if key not in self._mask_cache:
            mask = np.ones(len(self.hsv), dtype=bool) if phase is None else phase.mask(self.hsv)
            if floor is not None:
                mask &= self.vibrancy >= floor - 1e-9
            if not mask.any():
                raise StructuredConfigError("data.curriculum", f"no training color is allowed at step {step}")
            self._mask_cache[key] = mask
        return self._mask_cache[key]

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * self.num_steps
        for step in range(self.num_steps):
            p = torch.as_tensor(self.weights * self.eligible(offset + step))
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + offset + step) % (2**63 - 1))
            yield from torch.multinomial(p, self.samples_per_step, replacement=True, generator=g).tolist()
