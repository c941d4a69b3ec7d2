"""The labels YAML end to end: source -> chunks -> splits -> weak labels (+ calibration report).

``scripts/label_text.py`` is a thin wrapper over :func:`load_label_config`, :func:`build_labelled_dataset` and
:func:`calibrate`; the model engineer's training code can call the same functions, or read the saved dataset with
``datasets.load_from_disk``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import yaml

from ..errors import StructuredConfigError
from .label_calibration import DEFAULT_CALIBRATION_SET, build_report, label_rates
from .text import ChunkingConfig, SplitConfig, build_text_dataset, parse_source
from .text_labelers import LabelingPipeline

logger = logging.getLogger(__name__)

CONFIG_KEYS = {"source", "chunking", "splits", "concepts", "labelers", "combine", "calibration_set"}


def load_label_config(config: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Read and check a labels YAML (``configs/structured_gpt/labels.yaml``); returns the dict with every section
    validated (sources, chunking, splits and labelers are parsed once here so that typos fail before any work)."""
    if isinstance(config, Mapping):
        data = dict(config)
    else:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such labels config")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, Mapping):
        raise StructuredConfigError("labels config", f"expected a mapping at the top level, got {type(data).__name__}")
    unknown = set(data) - CONFIG_KEYS
    if unknown:
        raise StructuredConfigError(
            "labels config", f"unknown sections {sorted(unknown)}; expected some of {sorted(CONFIG_KEYS)}"
        )
    concepts = data.get("concepts")
    if isinstance(concepts, (list, tuple)):
        data["concepts"] = {str(c): {} for c in concepts}
    elif not isinstance(concepts, Mapping) or not concepts:
        raise StructuredConfigError("concepts", "expected a mapping of concept names (with optional descriptions)")
    for name in data["concepts"]:
        if not str(name).isidentifier():
            raise StructuredConfigError(
                f"concepts.{name}",
                "concept names become column names (prob_<name>): use letters, digits and underscores",
            )
    parse_source(data.get("source"))
    ChunkingConfig.from_dict(data.get("chunking"))
    SplitConfig.from_dict(data.get("splits"))
    LabelingPipeline.from_config(data)  # builds the labelers without loading any model
    return data


def calibration_set_path(value: str | None) -> Path:
    """``default`` (or nothing) -> the KJV set shipped in the package; otherwise a path."""
    if value in (None, "", "default"):
        return DEFAULT_CALIBRATION_SET
    return Path(value)


def build_labelled_dataset(
    config: Mapping[str, Any],
    source: str | Mapping[str, Any] | None = None,
    labelers: Sequence[str] | None = None,
    max_chunks: int | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> tuple[datasets.DatasetDict, LabelingPipeline, dict[str, Any]]:
    """Chunk, split and label the configured (or overriding) source.

    Args:
        config: from :func:`load_label_config`.
        source: overrides ``config["source"]``.
        labelers: keep only these labelers (default: all configured ones).
        max_chunks: label only the first N chunks of each split (a quick look at a big corpus).
        batch_size: chunks per labelling batch.
        progress: tqdm progress bars.

    Returns:
        the ``DatasetDict`` (``id``, ``document``, ``text``, ``prob_<concept>``, ``score_<labeler>_<concept>``,
        ``raw_<labeler>_<concept>``), the labelling pipeline, and label-rate statistics per split.
    """
    pipeline = LabelingPipeline.from_config(config, only=labelers)
    chunks = build_text_dataset(
        source if source is not None else config.get("source"), config.get("chunking"), config.get("splits")
    )
    if max_chunks is not None:
        if max_chunks < 1:
            raise StructuredConfigError("max_chunks", f"expected a positive integer, got {max_chunks}")
        chunks = datasets.DatasetDict({s: d.select(range(min(max_chunks, len(d)))) for s, d in chunks.items()})
    labelled = pipeline.label_dataset(chunks, batch_size=batch_size, progress=progress)
    stats = {}
    for split, ds in labelled.items():
        cols = {f"prob_{c}": np.asarray(ds[f"prob_{c}"], dtype=np.float64) for c in pipeline.concepts}
        stats[split] = {
            "chunks": len(ds),
            "characters": int(sum(len(t) for t in ds["text"])),
            "concepts": label_rates(cols, pipeline.concepts),
        }
    return labelled, pipeline, stats


def calibrate(
    pipeline: LabelingPipeline, config: Mapping[str, Any], path: str | Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Precision/recall of every labeler and the combination on the hand-labelled set (see ``label_calibration``)."""
    path = Path(path) if path is not None else calibration_set_path(config.get("calibration_set"))
    return build_report(pipeline, path, progress=progress)


__all__ = ["CONFIG_KEYS", "build_labelled_dataset", "calibrate", "calibration_set_path", "load_label_config"]
