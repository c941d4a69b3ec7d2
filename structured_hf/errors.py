"""Exceptions raised on bad user input or broken training state.

Every error names the offending value and what was expected, so that a user never has to read a traceback from
deep inside torch to learn that a YAML key was misspelled.
"""

from __future__ import annotations


def yaml_float_hint(value: object) -> str:
    """The YAML spelling that reads as a float for a value PyYAML left as a string (``"1e3"`` -> ``"1.0e+3"``):
    PyYAML (YAML 1.1) needs a dot in the mantissa and a sign in the exponent. Empty when ``value`` is no number."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    text = value.strip().lower()
    if "e" not in text:
        return f" (write {number!r})"
    mantissa, _, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    sign = "-" if exponent.startswith("-") else "+"
    return f" (YAML reads {value} as a string; write {mantissa}e{sign}{exponent.lstrip('+-')})"


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


class NonFiniteGradientError(FloatingPointError):
    """The gradient norm became NaN or infinite although every loss term was finite; raised before the optimizer
    step, so the weights (and every checkpoint) stay finite.

    Args:
        terms: the loss terms whose own gradient is non-finite (empty when no single term could be blamed).
        step: the global step.
        grad_norm: the gradient norm Trainer measured.
        norms: each term's gradient norm on the step's last micro-batch (for the message).
    """

    def __init__(self, terms: list[str], step: int, grad_norm: float, norms: dict[str, float] | None = None):
        self.terms, self.step, self.grad_norm = list(terms), step, grad_norm
        self.norms = dict(norms or {})
        if terms:
            culprit = "the gradient of loss term " + ", ".join(f"'{t}'" for t in terms) + " overflowed"
        elif self.norms:
            # Every term's gradient is finite in float64 but the float32 norm overflows: name the largest.
            largest = max(self.norms, key=lambda k: self.norms[k])
            culprit = f"the largest gradient is loss term '{largest}'s (too large for a float32 norm)"
        else:
            culprit = "the gradient could not be attributed to a loss term"
        detail = ", ".join(f"{k}: {v:.3g}" for k, v in self.norms.items())
        super().__init__(
            f"gradient norm is {grad_norm} at global step {step}: {culprit}"
            + (f" (per-term gradient norms: {detail})" if detail else "")
            + "; training stopped before the optimizer step, so the weights and every checkpoint stay finite. "
            "Lower the learning rate or this term's weight."
        )


class NonFiniteWeightsError(FloatingPointError):
    """A model about to be saved holds NaN or infinite weights; nothing was written."""

    def __init__(self, path: str, tensor: str, count: int):
        self.path, self.tensor, self.count = path, tensor, count
        super().__init__(
            f"refusing to save to {path}: parameter {tensor!r} has {count} NaN/inf values; no file was written"
        )
