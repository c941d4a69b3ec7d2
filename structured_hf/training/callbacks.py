"""Callbacks decide *when*: schedules set the current hyperparameters at the start of each optimizer step, and
reactive rules re-target them when a logged metric crosses a threshold."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from transformers import TrainerCallback

from ..schedules import Schedule
from ..sites import capture
from .transitions import ReactiveRule, SmoothParameter

logger = logging.getLogger(__name__)


class ScheduleCallback(TrainerCallback):
    """Writes each parameter's value for the coming step into ``values`` (read by the trainer).

    A parameter follows its keyframed schedule until a reactive rule fires for it; from then on it follows a
    minimum-jerk transition that starts from the schedule's current value and slope (so there is no kink).

    Args:
        schedules: parameter name -> schedule (regularizer names and ``reconstruction``).
        values: the dict the trainer reads; updated in place.
        rules: reactive rules, checked on every log.
    """

    def __init__(self, schedules: Mapping[str, Schedule], values: dict[str, float], rules: Sequence[ReactiveRule] = ()):
        self.schedules = dict(schedules)
        self.values = values
        self.rules = [rule.fresh() for rule in rules]
        self.overrides: dict[str, SmoothParameter] = {}
        self.events: list[dict[str, float | str]] = []
        self._update(0)

    def value(self, name: str, step: float) -> float:
        if name in self.overrides:
            return self.overrides[name].value(step)
        return self.schedules[name](step)

    def _update(self, step: int) -> None:
        for name in self.schedules:
            self.values[name] = self.value(name, step)

    def on_train_begin(self, args, state, control, **kwargs):
        self._update(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._update(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        for rule in self.rules:
            if rule.check(logs or {}):
                self.fire(rule, state.global_step)

    def fire(self, rule: ReactiveRule, step: int) -> None:
        """Re-target ``rule.parameter`` from its current value and slope at ``step``."""
        name = rule.parameter
        if name not in self.overrides:
            # Hand over from the keyframes without a kink: start from the schedule's value and slope here.
            slope = self.schedules[name](step + 1) - self.schedules[name](step)
            self.overrides[name] = SmoothParameter.in_motion(self.schedules[name](step), slope, step)
        self.overrides[name].retarget(rule.target, step, rule.duration)
        rule.fired_at = step
        self.events.append(
            {
                "step": step,
                "rule": f"{rule.metric} {rule.op} {rule.threshold}",
                "parameter": name,
                "target": rule.target,
            }
        )
        logger.info(
            "reactive rule fired at step %d: %s %s %s -> %s to %s over %d steps",
            step,
            rule.metric,
            rule.op,
            rule.threshold,
            name,
            rule.target,
            rule.duration,
        )


class LatentSnapshotCallback(TrainerCallback):
    """Records a site's activations for fixed inputs every ``every`` steps (for evolution figures and jitter).

    Args:
        inputs: model keyword inputs, e.g. ``{"colors": tensor (N, 3)}``.
        site: site to record.
        every: interval in optimizer steps (the first and last step are always recorded).
    """

    def __init__(self, inputs: Mapping, site: str, every: int):
        self.inputs = dict(inputs)
        self.site = site
        self.every = max(int(every), 1)
        self.steps: list[int] = []
        self.snapshots: list = []

    def _take(self, model, step: int) -> None:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), capture(model, [self.site]) as acts:
                model(**{k: v.to(model.device) for k, v in self.inputs.items()})
        finally:
            model.train(was_training)
        self.steps.append(step)
        self.snapshots.append(acts[self.site].detach().cpu().numpy())

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self._take(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._take(model, state.global_step)


class ProbeCallback(TrainerCallback):
    """Calls ``probe(model)`` every ``every`` steps (and at the start and end) and keeps ``(step, result)`` pairs:
    e.g. how a concept's cosine at each residual site evolves during training."""

    def __init__(self, probe, every: int):
        self.probe = probe
        self.every = max(int(every), 1)
        self.history: list[tuple[int, object]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self.history.append((0, self.probe(model)))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.history.append((state.global_step, self.probe(model)))
