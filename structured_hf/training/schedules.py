"""Schedules live in :mod:`structured_hf.schedules` (data curricula use them too); re-exported here for training code."""

from ..schedules import INTERPOLATIONS, Schedule, minimum_jerk, parse_schedule, parse_step

__all__ = ["INTERPOLATIONS", "Schedule", "minimum_jerk", "parse_schedule", "parse_step"]
