"""Exceptions raised on bad user input or broken training state.

Every error names the offending value and what was expected, so that a user never has to read a traceback from
deep inside torch to learn that a YAML key was misspelled.
"""

from __future__ import annotations


class StructuredConfigError(ValueError):
    """A recipe, concept map, regularizer spec or schedule is malformed.

    Args:
        field: dotted path of the offending field, e.g. ``"regularizers[1].concept"``.
        message: what is wrong and what was expected.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; raised before the optimizer can write it into the weights."""

    def __init__(self, term: str, step: int, value: float):
        self.term, self.step, self.value = term, step, value
        super().__init__(
            f"loss term '{term}' is {value} at global step {step}; training stopped before the optimizer step, "
            "so no checkpoint with non-finite weights was written. Lower the learning rate or this term's weight."
        )


class CheckpointError(OSError):
    """A checkpoint folder or file is missing, truncated, corrupted or does not match its config."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")


class HubPushError(ValueError):
    """An output folder cannot be pushed as it is: a required file is missing, or a file holds a secret."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")
