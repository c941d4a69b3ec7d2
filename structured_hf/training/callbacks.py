"""Callbacks decide *when*: schedules set the current hyperparameters at the start of each optimizer step."""

from __future__ import annotations

from collections.abc import Mapping

from transformers import TrainerCallback

from .schedules import Schedule


class ScheduleCallback(TrainerCallback):
    """Writes ``schedule(global_step)`` into ``values`` at train start (also after a resume) and every step start.

    Args:
        schedules: parameter name -> schedule (regularizer names and ``reconstruction``).
        values: the dict the trainer reads; updated in place.
    """

    def __init__(self, schedules: Mapping[str, Schedule], values: dict[str, float]):
        self.schedules = dict(schedules)
        self.values = values
        self._update(0)

    def _update(self, step: int) -> None:
        for name, schedule in self.schedules.items():
            self.values[name] = schedule(step)

    def on_train_begin(self, args, state, control, **kwargs):
        self._update(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._update(state.global_step)
