"""The ``data:`` section of a ``structured_gpt`` recipe: weak-labelled chunks -> BPE tokenizer -> LM blocks.

::

    data:
      text:
        labels_config: configs/structured_gpt/labels.yaml   # or an inline mapping (source, chunking, labelers, ...)
        labelers: [keywords, vader]                         # a subset of the configured labelers (default: all)
        labelled: data/kjv-labelled                         # optional: a DatasetDict saved by scripts/label_text.py
        max_chunks: null                                    # label only the first N chunks of each split
      tokenizer: {vocab_size: 4096, min_frequency: 2}
      block_size: 128
      filter: {concepts: [violence], threshold: 0.5}        # optional: drop training chunks with prob >= threshold
                                                            # (level: token masks only their scoped tokens' loss)
      token_scope: {labeler: keywords, mode: after}         # optional: a chunk's label reaches only the tokens
                                                            # from its first keyword match on (or `window: N` after each)

``token_scope`` makes chunk labels token-level. Without it every token of a labelled chunk carries the label; but a
causal model's residual at token ``t`` has read only tokens ``<= t``, and a chunk about a battle usually starts with
"And it came to pass": the label is unlearnable there, and anchoring such tokens teaches the model a constant offset
on the reserved axis for *all* text. With a scope, each block gets a ``scope_<concept>`` column from the evidence
spans of a keyword labeler of the labels config (:meth:`KeywordLabeler.spans`), and the trainer multiplies the
chunk's drawn label by it (the label is still drawn once per chunk, from the chunk's combined probability).

``filter`` is the data-filtering baseline of M4: the same recipe trained on a corpus without the (weakly) labelled
chunks. Validation and test splits are never filtered, so every run is evaluated on the same held-out text. With
``level: token`` the flagged chunks stay in the corpus and only the loss on their flagged tokens is masked (the
tokens stay as context for the tokens after them): a flagged token is one in the ``token_scope`` of a chunk whose
probability is >= the threshold, so token-level filtering needs ``token_scope``.

The tokenizer is trained on the training split only (before filtering). Everything here is deterministic given the config,
so two runs of one recipe see byte-identical blocks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from transformers import PreTrainedTokenizerFast

from ..errors import StructuredConfigError
from ..validation import check_keys, check_number
from .color_datasets import PROB_PREFIX
from .text_labelers import KeywordLabeler, build_labeler
from .text_pipeline import build_labelled_dataset, load_label_config
from .tokenizer import IGNORE_INDEX, SCOPE_MODES, SCOPE_PREFIX, SpanFinder, tokenize_blocks, train_bpe_tokenizer

logger = logging.getLogger(__name__)

LM_DATA_KEYS = {"text", "tokenizer", "block_size", "filter", "token_scope"}
_TEXT_KEYS = {"labels_config", "labelers", "labelled", "max_chunks"}
_TOKENIZER_KEYS = {"vocab_size", "min_frequency"}
_FILTER_KEYS = {"concepts", "threshold", "level"}
FILTER_LEVELS = ("document", "token")
_SCOPE_KEYS = {"labeler", "mode", "window"}


@dataclass(frozen=True)
class LMDataSpec:
    """A parsed ``data:`` section of a ``structured_gpt`` recipe (see the module docstring)."""

    labels_config: str | dict[str, Any] = "configs/structured_gpt/labels.yaml"
    labelers: tuple[str, ...] | None = None
    labelled: str | None = None
    max_chunks: int | None = None
    vocab_size: int = 4096
    min_frequency: int = 2
    block_size: int = 128
    filter_concepts: tuple[str, ...] = ()
    filter_threshold: float = 0.5
    filter_level: str = "document"
    scope_labeler: str | None = None
    scope_mode: str = "after"
    scope_window: int = 32

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LMDataSpec:
        check_keys("data", data, LM_DATA_KEYS, context="for a structured_gpt recipe")
        text = _mapping(data.get("text"), "data.text", _TEXT_KEYS)
        tok = _mapping(data.get("tokenizer"), "data.tokenizer", _TOKENIZER_KEYS)
        filt = _mapping(data.get("filter"), "data.filter", _FILTER_KEYS)
        scope = _mapping(data.get("token_scope"), "data.token_scope", _SCOPE_KEYS)
        if scope and not isinstance(scope.get("labeler"), str):
            raise StructuredConfigError(
                "data.token_scope.labeler",
                "name the keyword labeler (of the labels config) "
                f"whose matches are the token-level evidence, got {scope.get('labeler')!r}",
            )
        if scope.get("mode", "after") not in SCOPE_MODES:
            raise StructuredConfigError(
                "data.token_scope.mode", f"expected one of {SCOPE_MODES}, got {scope.get('mode')!r}"
            )
        labels_config = text.get("labels_config", cls.labels_config)
        if not isinstance(labels_config, (str, Mapping)):
            raise StructuredConfigError(
                "data.text.labels_config", f"expected a path or a mapping, got {labels_config!r}"
            )
        labelers = text.get("labelers")
        if labelers is not None and (not isinstance(labelers, list) or not all(isinstance(x, str) for x in labelers)):
            raise StructuredConfigError("data.text.labelers", f"expected a list of labeler names, got {labelers!r}")
        labelled = text.get("labelled")
        if labelled is not None and not isinstance(labelled, str):
            raise StructuredConfigError("data.text.labelled", f"expected a folder path, got {labelled!r}")
        concepts = filt.get("concepts", [])
        if isinstance(concepts, str):
            concepts = [concepts]
        if not isinstance(concepts, list) or not all(isinstance(c, str) for c in concepts):
            raise StructuredConfigError("data.filter.concepts", f"expected a list of concept names, got {concepts!r}")
        if filt and not concepts:
            raise StructuredConfigError("data.filter.concepts", "name at least one concept to filter out")
        threshold = filt.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
            raise StructuredConfigError("data.filter.threshold", f"expected a probability in (0, 1], got {threshold!r}")
        level = filt.get("level", "document")
        if level not in FILTER_LEVELS:
            raise StructuredConfigError("data.filter.level", f"expected one of {list(FILTER_LEVELS)}, got {level!r}")
        if level == "token" and not scope:
            raise StructuredConfigError(
                "data.filter.level",
                "token-level filtering masks the loss on the tokens a "
                "keyword labeler flags: set data.token_scope (e.g. {labeler: keywords, mode: "
                "window, window: 8}) to say which tokens those are",
            )
        spec = cls(
            labels_config=dict(labels_config) if isinstance(labels_config, Mapping) else labels_config,
            labelers=None if labelers is None else tuple(labelers),
            labelled=labelled,
            max_chunks=_positive_int(text.get("max_chunks"), "data.text.max_chunks", optional=True),
            vocab_size=_positive_int(tok.get("vocab_size", 4096), "data.tokenizer.vocab_size"),
            min_frequency=_positive_int(tok.get("min_frequency", 2), "data.tokenizer.min_frequency"),
            block_size=_positive_int(data.get("block_size", 128), "data.block_size"),
            filter_concepts=tuple(concepts),
            filter_threshold=float(threshold),
            filter_level=level,
            scope_labeler=scope.get("labeler"),
            scope_mode=scope.get("mode", "after"),
            scope_window=_positive_int(scope.get("window", 32), "data.token_scope.window"),
        )
        if spec.block_size < 2:
            raise StructuredConfigError("data.block_size", f"expected >= 2, got {spec.block_size}")
        return spec

    def label_config(self) -> dict[str, Any]:
        """The labels config, read and validated (errors name the field)."""
        if isinstance(self.labels_config, str) and not Path(self.labels_config).is_file():
            raise StructuredConfigError("data.text.labels_config", f"no such labels config: {self.labels_config}")
        return load_label_config(self.labels_config)

    def concepts(self) -> list[str]:
        return [str(c) for c in self.label_config()["concepts"]]

    def scope_spans(self) -> dict[str, SpanFinder]:
        """Concept -> evidence span finder of the ``token_scope`` labeler (empty without a scope)."""
        if self.scope_labeler is None:
            return {}
        config = self.label_config()
        labelers = config.get("labelers") or {}
        if self.scope_labeler not in labelers:
            raise StructuredConfigError(
                "data.token_scope.labeler",
                f"no labeler '{self.scope_labeler}' in the labels config; it has {sorted(labelers)}",
            )
        labeler = build_labeler(self.scope_labeler, labelers[self.scope_labeler], config["concepts"])
        if not isinstance(labeler, KeywordLabeler):
            raise StructuredConfigError(
                "data.token_scope.labeler",
                f"'{self.scope_labeler}' is a {labeler.type} "
                "labeler; token-level evidence needs a keyword labeler (it finds spans)",
            )
        return {c: partial(labeler.spans, concept=c) for c in labeler.concepts}


def _mapping(value: Any, field_name: str, allowed: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise StructuredConfigError(field_name, f"expected a mapping, got {value!r}")
    check_keys(field_name, value, allowed)
    return dict(value)


def _positive_int(value: Any, field_name: str, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    return check_number(field_name, value, low=1, integer=True)


# Labelling the whole default corpus takes ~20 s; the anchored run, its baselines and the comparison of one process
# label the same text the same way, so the result is kept per (labels config, labelers, max_chunks). Keyed on the
# config, not the file contents: a corpus edited in the middle of a process is not noticed (start a new process).
_LABELLED_CACHE: dict[str, datasets.DatasetDict] = {}


def labelled_chunks(spec: LMDataSpec, progress: bool = False) -> datasets.DatasetDict:
    """Train/validation/test chunks with ``prob_<concept>`` columns: loaded from ``labelled`` or labelled now."""
    if spec.labelled is None:
        config = spec.label_config()
        key = json.dumps([config, spec.labelers, spec.max_chunks], sort_keys=True, default=str)
        if key not in _LABELLED_CACHE:
            chunks, _, stats = build_labelled_dataset(
                config, labelers=spec.labelers, max_chunks=spec.max_chunks, progress=progress
            )
            logger.info("labelled chunks: %s", {s: v["chunks"] for s, v in stats.items()})
            _LABELLED_CACHE.clear()  # one corpus at a time is enough
            _LABELLED_CACHE[key] = chunks
        return _LABELLED_CACHE[key]
    try:
        chunks = datasets.load_from_disk(spec.labelled)
    except (FileNotFoundError, ValueError) as e:
        raise StructuredConfigError(
            "data.text.labelled", f"cannot load a saved DatasetDict from {spec.labelled}: {e}"
        ) from None
    if not isinstance(chunks, datasets.DatasetDict) or "train" not in chunks:
        raise StructuredConfigError(
            "data.text.labelled",
            f"{spec.labelled} must hold a DatasetDict with a train split (scripts/label_text.py writes one)",
        )
    if spec.max_chunks is not None:
        chunks = datasets.DatasetDict({s: d.select(range(min(spec.max_chunks, len(d)))) for s, d in chunks.items()})
    return chunks


def filter_chunks(chunks: datasets.DatasetDict, concepts: tuple[str, ...], threshold: float) -> datasets.DatasetDict:
    """Drop *training* chunks whose label probability for any of ``concepts`` is >= ``threshold``."""
    if not concepts:
        return chunks
    train = chunks["train"]
    for c in concepts:
        if PROB_PREFIX + c not in train.column_names:
            raise StructuredConfigError(
                "data.filter.concepts",
                f"no label '{c}'; the data has "
                f"{[n[len(PROB_PREFIX) :] for n in train.column_names if n.startswith(PROB_PREFIX)]}",
            )
    probs = np.stack([np.asarray(train[PROB_PREFIX + c], dtype=np.float64) for c in concepts], axis=1)
    keep = np.flatnonzero(probs.max(axis=1) < threshold)
    logger.info(
        "data filter: kept %d of %d training chunks (removed %s >= %.2f)",
        len(keep),
        len(train),
        list(concepts),
        threshold,
    )
    out = dict(chunks)
    out["train"] = train.select(keep)
    return datasets.DatasetDict(out)


def build_lm_data(
    spec: LMDataSpec, progress: bool = False
) -> tuple[datasets.DatasetDict, PreTrainedTokenizerFast, datasets.DatasetDict]:
    """``(chunks, tokenizer, blocks)`` for a recipe: labelled (and filtered) chunks, the BPE trained on their
    training split, and ``block_size``-token blocks carrying each chunk's label probabilities."""
    chunks = labelled_chunks(spec, progress)
    # The tokenizer is trained on the *unfiltered* training split, so the data-filtering baseline shares the
    # anchored run's vocabulary and per-token losses of the two compare directly (and BPE training is deterministic).
    tokenizer = train_bpe_tokenizer(
        chunks["train"]["text"],
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        model_max_length=spec.block_size,
    )
    chunks, blocks = filtered_blocks(chunks, tokenizer, spec)
    return chunks, tokenizer, blocks


def filtered_blocks(
    chunks: datasets.DatasetDict, tokenizer: PreTrainedTokenizerFast, spec: LMDataSpec
) -> tuple[datasets.DatasetDict, datasets.DatasetDict]:
    """``(chunks, blocks)`` with the recipe's ``filter`` applied: document filtering drops the flagged training chunks
    before tokenizing, token filtering masks the loss on their flagged tokens after. One path for every tokenizer
    (ours and a pretrained model's), so no recipe kind can skip a filter level."""
    if spec.filter_level == "document":
        chunks = filter_chunks(chunks, spec.filter_concepts, spec.filter_threshold)
    if len(chunks["train"]) == 0:
        raise StructuredConfigError("data", "the training split is empty (after filtering)")
    blocks = tokenize_blocks(
        chunks,
        tokenizer,
        block_size=spec.block_size,
        scope_spans=spec.scope_spans(),
        scope_mode=spec.scope_mode,
        scope_window=spec.scope_window,
    )
    if spec.filter_level == "token":
        blocks = datasets.DatasetDict(
            {**blocks, "train": mask_flagged_tokens(blocks["train"], spec.filter_concepts, spec.filter_threshold)}
        )
    return chunks, blocks


def mask_flagged_tokens(blocks: datasets.Dataset, concepts: tuple[str, ...], threshold: float) -> datasets.Dataset:
    """Token-level filtering: ``labels`` -100 (no loss) on the tokens in a ``concepts`` scope of blocks whose chunk
    probability is >= ``threshold``; the tokens stay in ``input_ids``, so later tokens still read them. Blocks left
    with no target at all are dropped (every other block keeps its place in order)."""
    names = set(blocks.column_names)
    for c in concepts:
        if PROB_PREFIX + c not in names or SCOPE_PREFIX + c not in names:
            raise StructuredConfigError(
                "data.filter.concepts",
                f"no token scope for '{c}': the token_scope labeler "
                f"flags {sorted(n[len(SCOPE_PREFIX) :] for n in names if n.startswith(SCOPE_PREFIX))}",
            )
    table = blocks.with_format("numpy")
    labels = np.asarray(table["labels"]).copy()
    flagged = np.zeros(labels.shape, dtype=bool)
    for c in concepts:
        chunk_flagged = np.asarray(table[PROB_PREFIX + c], dtype=np.float64) >= threshold
        flagged |= chunk_flagged[:, None] & (np.asarray(table[SCOPE_PREFIX + c]) > 0)
    real = labels != IGNORE_INDEX
    labels[flagged] = IGNORE_INDEX
    # A block whose every target is masked teaches nothing, and a batch made only of such blocks has a 0/0 mean
    # loss (a NonFiniteLossError at batch size 1). Position 0 is never a target: a causal LM predicts t from t - 1.
    keep = (labels[:, 1:] != IGNORE_INDEX).any(axis=1)
    logger.info(
        "token-level filter: masked the loss on %d of %d training tokens (%s >= %.2f, in scope); dropped %d of %d "
        "blocks left with no target",
        int((flagged & real).sum()),
        int(real.sum()),
        list(concepts),
        threshold,
        int((~keep).sum()),
        len(keep),
    )
    masked = blocks.remove_columns("labels").add_column("labels", labels.tolist(), feature=blocks.features["labels"])
    return masked if keep.all() else masked.select(np.flatnonzero(keep).tolist())


__all__ = [
    "FILTER_LEVELS",
    "LM_DATA_KEYS",
    "LMDataSpec",
    "build_lm_data",
    "filter_chunks",
    "filtered_blocks",
    "labelled_chunks",
    "mask_flagged_tokens",
]
