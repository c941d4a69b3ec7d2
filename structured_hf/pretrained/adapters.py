"""The concept map beside a LoRA adapter, and loading an adapter back with its map.

``PeftModel.save_pretrained`` writes only the adapter (``adapter_config.json``, ``adapter_model.safetensors``), not
the base model's ``config.json``, so the concept map is written next to it as ``structured_concepts.json``
(``{"concepts": [...], "base_model": ...}``). :func:`load_adapter` reads both back: base model, adapter, merged by
default (surgery needs plain weights), sites attached and the map restored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..concepts import ConceptMap
from ..errors import StructuredConfigError
from .loading import load_causal_lm
from .sites import attach_sites

CONCEPTS_FILE = "structured_concepts.json"


def save_adapter_concepts(folder: str | Path, concepts: Any, base_model: str) -> Path:
    """Write the concept map (and the base model it applies to) beside an adapter saved in ``folder``."""
    path = Path(folder) / CONCEPTS_FILE
    path.write_text(json.dumps({"concepts": ConceptMap.parse(concepts).to_list(), "base_model": base_model}, indent=2))
    return path


def read_adapter_concepts(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CONCEPTS_FILE
    if not path.is_file():
        raise StructuredConfigError("adapter", f"{folder} has no {CONCEPTS_FILE} (not saved by structured_hf)")
    entry = json.loads(path.read_text())
    ConceptMap.parse(entry.get("concepts"), f"{CONCEPTS_FILE}.concepts")
    return entry


def load_adapter(
    folder: str | Path, base_model: str | None = None, merge: bool = True, dtype: str | None = None
) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)``: the base model (``base_model`` or the one recorded beside the adapter) with the LoRA
    adapter of ``folder``, merged unless ``merge=False``, sites attached and the concept map restored."""
    from peft import PeftModel  # optional dependency: only adapters need it

    entry = read_adapter_concepts(folder)
    model, tokenizer = load_causal_lm(base_model or entry["base_model"], dtype)
    model = PeftModel.from_pretrained(model, str(folder))
    if merge:
        model = model.merge_and_unload()
    return attach_sites(model, concepts=entry["concepts"]), tokenizer


__all__ = ["CONCEPTS_FILE", "load_adapter", "read_adapter_concepts", "save_adapter_concepts"]
