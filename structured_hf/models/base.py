"""What every structured_hf model shares: config validation at construction, the concept map, strict loading."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

from ..concepts import ConceptMap
from ..errors import CheckpointError


class StructuredPreTrainedModel(PreTrainedModel):
    """Base class of structured_hf models.

    - The config is validated when a model is built, so values assigned after the config's construction (which
      `@strict` only type-checks) cannot build a broken model.
    - ``from_pretrained`` refuses a checkpoint with missing or mis-shaped weights instead of silently initialising
      them: a deleted concept must not come back from a random init, and a damaged file must not look trained.
    """

    def __init__(self, config, *args: Any, **kwargs: Any):
        config.validate()
        super().__init__(config, *args, **kwargs)

    @property
    def concept_map(self) -> ConceptMap:
        """Where this model's concepts live (parsed from ``config.concepts`` on each access, so never stale after
        surgery); the same as :meth:`ConceptMap.of`, which also reads pretrained models with attached sites."""
        return ConceptMap.of(self)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args: Any, **kwargs: Any):
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        missing = sorted(info.get("missing_keys") or [])
        mismatched = [k for k, *_ in (info.get("mismatched_keys") or [])]
        if missing or mismatched:
            raise CheckpointError(
                str(pretrained_model_name_or_path),
                f"the checkpoint lacks weights {missing} or has wrong shapes for {mismatched}; "
                "refusing to fill them with a random initialisation",
            )
        return (model, info) if want_info else model
