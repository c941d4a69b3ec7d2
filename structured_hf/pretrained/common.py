"""Small helpers shared by the pretrained-model modules: unwrapping and block counting."""

from __future__ import annotations

import re

from torch import nn

from ..errors import StructuredConfigError
from ..layouts import get_path, layout_for

_SITE_RE = re.compile(r"^layers\.(\d+)\.(.+)$")


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside wrappers that keep it (a peft ``PeftModel``: ``get_base_model()``; DDP)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model
    return getattr(inner, "module", inner) if isinstance(inner, nn.parallel.DistributedDataParallel) else inner


def num_blocks(model: nn.Module) -> int:
    base = unwrap(model)
    return len(get_path(base, layout_for(base.config).blocks))


def check_site_name(model: nn.Module, site: str, field: str = "site") -> None:
    """A clear error for a block index past the last block (before the generic unknown-site error)."""
    match = _SITE_RE.match(site)
    n = num_blocks(model)
    if match is not None and int(match.group(1)) >= n:
        raise StructuredConfigError(
            field,
            f"site '{site}' names block {match.group(1)}, past the last block: "
            f"the model has {n} blocks (layers.0 .. layers.{n - 1})",
        )


__all__ = ["check_site_name", "num_blocks", "unwrap"]
