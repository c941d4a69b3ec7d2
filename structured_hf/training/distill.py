"""Delete, then distil into a fresh model: the deleted model is the teacher, its outputs the student's only targets.

A deletion edited into the weights can be undone by fine-tuning because the rest of the network still knows the
concept. Lee et al. (2025, "Distillation Robustifies Unlearning") rebuild the model from *outputs* only: a freshly
initialized student trained to match the unlearned teacher's next-token distributions (forward KL, no labels) on the
unlabelled corpus relearns about as slowly as a model that never saw the data; a student that starts from the
teacher's weights inherits what the teacher still knows. Here that is an ordinary recipe: add

```yaml
distill: {teacher: outputs/structured_gpt-ablated, temperature: 1.0}
```

to the student's recipe (same family, same vocabulary; the student is initialized from the recipe's own seed and
may carry its own concept anchors). :class:`DistillationTrainer` is :class:`~structured_hf.training.AnchoredTrainer`
with the model's own loss replaced:

- language models: ``T² · KL(teacher_T || student_T)`` per predicted token (softmax at temperature ``T``), averaged
  over the tokens the labels mark (the batch's real tokens);
- regression families (the color autoencoder and the color-operation transformer): the model's own MSE with the
  teacher's prediction as the target, which *is* the squared-error distillation loss.

Every regularizer, route, schedule and Trainer feature keeps working (the trainer computes the rest as before).
Evaluation (``eval_loss``, ``eval_perplexity``) measures the student against the data, not against the teacher, so
a student's numbers read like any other run's.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel

from ..errors import CheckpointError, StructuredConfigError
from ..validation import check_keys, check_number
from ..registry import family_for_model_type
from .trainer import AnchoredTrainer

DISTILL_KEYS = {"teacher", "temperature"}
# model_type -> the output field holding a regression family's prediction
_PREDICTION = {"structured_color_autoencoder": "reconstruction", "structured_color_transformer": "prediction"}


@dataclass(frozen=True)
class DistillSpec:
    """The ``distill:`` section of a recipe.

    Args:
        teacher: folder (or Hub id pulled beforehand) of the teacher model, e.g. a deleted model saved with
            ``save_pretrained``.
        temperature: softmax temperature of the language-model KL (ignored by regression families).
    """

    teacher: str
    temperature: float = 1.0

    @classmethod
    def from_dict(cls, raw: Any) -> DistillSpec:
        check_keys("distill", raw, DISTILL_KEYS, "teacher: PATH[, temperature: T]")
        teacher = raw.get("teacher")
        if not isinstance(teacher, str) or not teacher:
            raise StructuredConfigError("distill.teacher", f"expected the teacher model's folder, got {teacher!r}")
        temperature = raw.get("temperature", 1.0)
        check_number("distill.temperature", temperature, low=0, low_open=True)
        return cls(teacher, float(temperature))


def load_teacher(spec: DistillSpec) -> nn.Module:
    """The teacher in eval mode with gradients off, loaded with its family's model class (the registry's)."""
    path = Path(spec.teacher)
    if not (path / "config.json").is_file():
        raise StructuredConfigError("distill.teacher", f"no model folder at {spec.teacher!r} (config.json missing)")
    try:
        config = AutoConfig.from_pretrained(path)
        family = family_for_model_type(config.model_type)  # its model class: a causal LM for structured_gpt
        teacher = (family.model_class if family is not None else AutoModel).from_pretrained(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(spec.teacher, f"distill.teacher: cannot load the teacher: {e}") from None
    return teacher.eval().requires_grad_(False)


def check_teacher(teacher: nn.Module, student: nn.Module) -> None:
    """Teacher and student must be the same family and, for language models, share the vocabulary."""
    t, s = teacher.config.model_type, student.config.model_type
    if t != s:
        raise StructuredConfigError("distill.teacher", f"the teacher is a {t!r} model, the student a {s!r} model")
    tv, sv = getattr(teacher.config, "vocab_size", None), getattr(student.config, "vocab_size", None)
    if tv != sv:
        raise StructuredConfigError(
            "distill.teacher",
            f"the teacher's vocabulary has {tv} tokens, the student's "
            f"{sv}: next-token distributions would not compare (train both from the same "
            "tokenizer)",
        )


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean over predicted tokens of ``T² · KL(softmax(teacher/T) || softmax(student/T))``.

    ``logits`` are ``(B, T, V)``; ``labels`` ``(B, T)`` with -100 on padding; position ``t`` predicts token ``t + 1``,
    so the logits up to the last position are compared where the next label is real.
    """
    keep = labels[:, 1:] != -100  # (B, T-1)
    s = F.log_softmax(student_logits[:, :-1][keep].float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits[:, :-1][keep].float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature**2


def _forward_kwargs(model: nn.Module, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs ``model.forward`` takes, without labels (the teacher only predicts)."""
    accepted = set(inspect.signature(model.forward).parameters)
    return {k: v for k, v in inputs.items() if k in accepted and k != "labels"}


class DistillationTrainer(AnchoredTrainer):
    """:class:`AnchoredTrainer` whose task loss is the distance to a fixed teacher's outputs (module docstring)."""

    def __init__(self, *args: Any, teacher: nn.Module, temperature: float = 1.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        check_teacher(teacher, self.model)
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = float(temperature)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            # Evaluation measures the student on the data, as every other run is measured: its eval_loss and
            # eval_perplexity must compare with the teacher's and the baselines' (the KL to the teacher would read
            # as a perplexity near 1).
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        device = next(model.parameters()).device
        teacher = self.teacher.to(device)
        kind = teacher.config.model_type
        if kind in _PREDICTION:
            with torch.no_grad():
                target = teacher(**_forward_kwargs(teacher, inputs))[_PREDICTION[kind]]
            inputs = {**inputs, "labels": target.detach()}
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if "labels" not in inputs:
            raise StructuredConfigError("inputs", "distillation batches need `labels` to mark the real tokens")
        with torch.no_grad():
            teacher_logits = teacher(**_forward_kwargs(teacher, inputs)).logits
        labels = inputs["labels"]

        def replace_loss(module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
            output["loss"] = distillation_kl(output["logits"], teacher_logits, labels, self.temperature)
            return output

        # The student's forward runs inside AnchoredTrainer.compute_loss (with its activation recorders and gradient
        # routes); a forward hook swaps its cross-entropy for the KL there, so nothing else needs to change.
        handle = model.register_forward_hook(replace_loss, with_kwargs=True)
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            handle.remove()


__all__ = ["DISTILL_KEYS", "DistillSpec", "DistillationTrainer", "check_teacher", "distillation_kl", "load_teacher"]
