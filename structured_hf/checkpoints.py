"""Checking a saved model folder before loading it: clear errors for truncated, corrupted or non-finite weights.

`AutoModel.from_pretrained` on a damaged ``model.safetensors`` raises safetensors' own message (``Error while
deserializing header: invalid header length``), which names neither the file nor what went wrong with it.
:func:`check_checkpoint` reads the safetensors headers itself (without loading the weights into a model) and raises a
:class:`~structured_hf.errors.CheckpointError` that names the file and says what was expected; :func:`load_pretrained`
checks a local folder, then loads it.

    model = structured_hf.load_pretrained("outputs/default")       # AutoModel by default

The safetensors format has no checksum: a flipped bit inside the tensor data cannot be detected from the file. The
value check (on by default) catches the damage that matters most for this library, NaN or infinite weights.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import CheckpointError

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
# Bytes per element of the safetensors dtypes (the format's own list).
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
# A header larger than this is not a model header but garbage read as a length (safetensors uses the same bound).
_MAX_HEADER = 100_000_000


def check_safetensors_file(path: str | Path, check_values: bool = True) -> dict[str, Any]:
    """Validate one ``.safetensors`` file; returns its header (tensor name -> dtype/shape/offsets).

    Checks that the file is long enough for its 8-byte header length, that the header is a JSON object describing
    every tensor with a known dtype, a shape and byte offsets that match the shape, that the tensors tile the data
    region exactly (a truncated file ends early; appended bytes are extra), and with ``check_values`` that every
    floating-point tensor is finite.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(str(path), "no such file")
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(
                str(path), f"truncated or empty: {size} bytes, a safetensors file starts with an 8-byte header length"
            )
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER, size - 8):
            raise CheckpointError(
                str(path),
                f"not a complete safetensors file: its first 8 bytes announce a {header_len}-byte header "
                f"but the file has {size} bytes (truncated, or not a safetensors file)",
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(str(path), f"corrupted safetensors header (not valid JSON: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(
            str(path), f"corrupted safetensors header: expected a JSON object, got {type(header).__name__}"
        )
    data_len = size - 8 - header_len
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise CheckpointError(str(path), f"corrupted safetensors header: entry {name!r} lacks dtype/shape/offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPE_BYTES:
            raise CheckpointError(str(path), f"tensor {name!r} has unknown dtype {dtype!r}")
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise CheckpointError(
                str(path), f"corrupted safetensors header: tensor {name!r} has shape {shape!r} and offsets {offsets!r}"
            )
        expected = math.prod(shape) * _DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != expected:
            raise CheckpointError(
                str(path),
                f"tensor {name!r} ({dtype} {shape}) should take {expected} bytes, the "
                f"header gives it {offsets[1] - offsets[0]}",
            )
        spans.append((offsets[0], offsets[1], name))
    end = max((e for _, e, _ in spans), default=0)
    if end > data_len:
        raise CheckpointError(
            str(path),
            f"truncated: the header describes {end} bytes of tensor data but only {data_len} follow it "
            f"({end - data_len} bytes missing); save or download the checkpoint again",
        )
    if end < data_len:
        raise CheckpointError(str(path), f"corrupted: {data_len - end} unexpected bytes after the tensor data")
    spans.sort()
    position = 0
    for begin, stop, name in spans:
        if begin != position:
            raise CheckpointError(
                str(path),
                f"corrupted safetensors header: tensor {name!r} starts at byte {begin}, "
                f"expected {position} (tensors must tile the data without gaps/overlaps)",
            )
        position = stop
    if check_values:
        _check_finite_tensors(path, [name for _, _, name in spans], header)
    return header


def _check_finite_tensors(path: Path, names: Iterable[str], header: dict[str, Any]) -> None:
    import torch
    from safetensors import SafetensorError, safe_open

    floating = {"F16", "BF16", "F32", "F64", "F8_E5M2", "F8_E4M3"}
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in names:
                if header[name]["dtype"] not in floating:
                    continue
                tensor = f.get_tensor(name)
                if not bool(torch.isfinite(tensor).all()):
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise CheckpointError(
                        str(path), f"tensor {name!r} has {bad} NaN/inf values; refusing to load non-finite weights"
                    )
    except SafetensorError as e:
        raise CheckpointError(str(path), f"unreadable safetensors file ({e})") from None


def check_checkpoint(folder: str | Path, check_values: bool = True) -> list[Path]:
    """Validate a ``save_pretrained`` folder: ``config.json`` and every safetensors weight file (sharded or not).

    Returns the weight files checked.

    Raises:
        CheckpointError: naming the missing or damaged file and what was expected.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(str(folder), "not a folder (expected a folder written by save_pretrained)")
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(str(folder / CONFIG_NAME), "missing: a checkpoint folder needs its config.json")
    index = folder / WEIGHTS_INDEX_NAME
    if (folder / WEIGHTS_NAME).is_file():
        files = [folder / WEIGHTS_NAME]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = [folder / name for name in sorted(set(weight_map.values()))]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(str(index), f"corrupted shard index ({type(e).__name__}: {e})") from None
    else:
        present = sorted(p.name for p in folder.iterdir())
        raise CheckpointError(
            str(folder / WEIGHTS_NAME),
            f"missing: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in the folder (it has {present})",
        )
    for path in files:
        check_safetensors_file(path, check_values=check_values)
    return files


def load_pretrained(path: str | Path, model_class: Any = None, check_values: bool = True, **kwargs: Any):
    """``model_class.from_pretrained(path, **kwargs)`` (default ``AutoModel``) after :func:`check_checkpoint`.

    A local folder is checked before loading; for a Hub repo id the download is loaded as usual, and a damaged
    safetensors file still raises :class:`CheckpointError` (naming the repo) instead of safetensors' bare message.
    """
    if model_class is None:
        from transformers import AutoModel

        model_class = AutoModel
    if Path(path).is_dir():
        check_checkpoint(path, check_values=check_values)
    from safetensors import SafetensorError

    try:
        return model_class.from_pretrained(path, **kwargs)
    except SafetensorError as e:
        raise CheckpointError(f"{path}/{WEIGHTS_NAME}", f"corrupted safetensors file ({e})") from None
