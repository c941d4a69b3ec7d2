"""Byte-level BPE tokenizer trained on the training split, and labelled chunks -> fixed-length LM blocks.

The tokenizer is GPT-2's scheme (byte-level pre-tokenization, so any string round-trips exactly and nothing is ever
out of vocabulary) trained from scratch with the ``tokenizers`` library, then wrapped as a
``PreTrainedTokenizerFast`` so it saves next to the model and loads with ``AutoTokenizer.from_pretrained(folder)``.
Like Llama's tokenizer it prepends ``<|bos|>`` to every encoded text: training blocks start with it, so prompts
encoded the same way at generation time look like training data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ..errors import StructuredConfigError
from .color_datasets import PROB_PREFIX

logger = logging.getLogger(__name__)

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
IGNORE_INDEX = -100  # transformers' causal-LM losses skip this label
SCOPE_PREFIX = "scope_"  # per-token 0/1 column: the tokens of a block a chunk label applies to
SCOPE_MODES = ("after", "window")

SpanFinder = Callable[[str], list[tuple[int, int]]]
"""A text -> character spans of a concept's evidence (e.g. :meth:`KeywordLabeler.spans`)."""


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    min_frequency: int = 2,
    model_max_length: int = 1024,
    show_progress: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (use the *training* split only, so validation text stays unseen).

    Args:
        texts: the training text, e.g. ``dataset["train"]["text"]``.
        vocab_size: total vocabulary including the 256 byte symbols and the 3 special tokens.
        min_frequency: a pair must occur this often to be merged.
        model_max_length: recorded in the tokenizer config (the model's context length).
        show_progress: the ``tokenizers`` trainer's own progress bar.
    """
    if vocab_size < 256 + 3 + 1:
        raise StructuredConfigError(
            "tokenizer.vocab_size",
            f"expected >= 260 (256 bytes, 3 special tokens and at least one merge), got {vocab_size}",
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, BOS, EOS],  # ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    # trim_offsets=False keeps offsets of byte-level tokens exact; the template adds <|bos|> in front of every text.
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # byte-level decoding is already exact; do not "fix" spaces before ','
    )
    logger.info("trained a byte-level BPE with %d tokens", len(wrapped))
    return wrapped


def tokenize_blocks(
    dataset: datasets.DatasetDict | datasets.Dataset,
    tokenizer: PreTrainedTokenizerFast,
    block_size: int = 128,
    text_column: str = "text",
    keep_columns: Sequence[str] = ("id",),
    batch_size: int = 1000,
    truncate: bool = False,
    scope_spans: Mapping[str, SpanFinder] | None = None,
    scope_mode: str = "after",
    scope_window: int = 32,
) -> datasets.DatasetDict | datasets.Dataset:
    """Labelled chunks -> fixed-length blocks for causal-LM training, one chunk's label probabilities per block.

    Each chunk becomes ``<|bos|> text <|eos|>``, cut into pieces of ``block_size`` tokens; the last piece is padded
    (``attention_mask`` 0, ``labels`` -100). Blocks never mix chunks, so every ``prob_<concept>`` column (and the
    columns in ``keep_columns``) is copied unchanged to all blocks of its chunk: the regularizers then act on all
    tokens of a labelled chunk. ``labels`` equals ``input_ids`` except on padding; the model shifts.

    Args:
        dataset: a ``DatasetDict`` (every split is converted) or one ``Dataset`` with a text column.
        tokenizer: from :func:`train_bpe_tokenizer` (needs bos, eos and pad tokens).
        block_size: tokens per block.
        text_column: the column holding the chunk text.
        keep_columns: extra columns carried per block when present (the ``prob_*`` columns always are).
        batch_size: chunks per ``datasets.map`` batch.
        truncate: keep only each chunk's first block (drops the tail of chunks longer than a block instead of
            making a mostly-padded extra block).
        scope_spans: concept -> evidence finder; adds a ``scope_<concept>`` column per block (see
            :func:`token_scope`), so that a chunk's label reaches only the tokens that can know about the concept.
        scope_mode, scope_window: how evidence tokens become a scope (:func:`token_scope`).
    """
    if block_size < 2:
        raise StructuredConfigError("block_size", f"expected >= 2, got {block_size}")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tokenizer, name) is None:
            raise StructuredConfigError("tokenizer", f"{name} is not set; train it with train_bpe_tokenizer")
    if scope_mode not in SCOPE_MODES:
        raise StructuredConfigError("scope.mode", f"expected one of {SCOPE_MODES}, got {scope_mode!r}")
    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict(
            {
                split: tokenize_blocks(
                    ds,
                    tokenizer,
                    block_size,
                    text_column,
                    keep_columns,
                    batch_size,
                    truncate,
                    scope_spans,
                    scope_mode,
                    scope_window,
                )
                for split, ds in dataset.items()
            }
        )
    if text_column not in dataset.column_names:
        raise StructuredConfigError("text_column", f"no column {text_column!r}; columns are {dataset.column_names}")
    carried = [c for c in dataset.column_names if c.startswith(PROB_PREFIX)]
    carried += [c for c in keep_columns if c in dataset.column_names and c not in carried]
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    scoped = {SCOPE_PREFIX + c: find for c, find in (scope_spans or {}).items()}

    def to_blocks(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {
            "input_ids": [],
            "attention_mask": [],
            "labels": [],
            **{c: [] for c in [*carried, *scoped]},
        }
        # Whole chunks, cut into blocks below (offsets only when scope columns need them).
        encoded = tokenizer(
            batch[text_column], add_special_tokens=False, verbose=False, return_offsets_mapping=bool(scoped)
        )
        for row, ids in enumerate(encoded["input_ids"]):
            ids = [bos, *ids, eos]
            # Evidence per token of [bos, text, eos]: the special tokens cover no characters.
            hits = {
                c: np.concatenate(
                    [[False], span_hits(encoded["offset_mapping"][row], find(batch[text_column][row])), [False]]
                )
                for c, find in scoped.items()
            }
            for start in range(0, block_size if truncate else len(ids), block_size):
                piece = ids[start : start + block_size]
                n_pad = block_size - len(piece)
                out["input_ids"].append(piece + [pad] * n_pad)
                out["attention_mask"].append([1] * len(piece) + [0] * n_pad)
                out["labels"].append(piece + [IGNORE_INDEX] * n_pad)
                for c in carried:
                    out[c].append(batch[c][row])
                for c, hit in hits.items():
                    # Per block: the model sees only its own block, so evidence in an earlier block does not count.
                    scope = token_scope(hit[start : start + len(piece)], scope_mode, scope_window)
                    out[c].append(np.concatenate([scope, np.zeros(n_pad, dtype=np.int8)]).tolist())
        return out

    features = datasets.Features(
        {
            "input_ids": datasets.List(datasets.Value("int32"), length=block_size),
            "attention_mask": datasets.List(datasets.Value("int8"), length=block_size),
            "labels": datasets.List(datasets.Value("int32"), length=block_size),
            **{c: dataset.features[c] for c in carried},
            **{c: datasets.List(datasets.Value("int8"), length=block_size) for c in scoped},
        }
    )
    blocks = dataset.map(
        to_blocks,
        batched=True,
        batch_size=batch_size,
        remove_columns=dataset.column_names,
        features=features,
        desc=f"tokenizing into {block_size}-token blocks",
    )
    if len(blocks):
        mask = np.asarray(blocks.with_format("numpy")["attention_mask"])
        logger.info(
            "%d blocks from %d chunks; %.1f%% of positions are padding",
            len(blocks),
            len(dataset),
            100.0 * (1.0 - mask.mean()),
        )
    return blocks


def span_hits(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """``(n_tokens,)`` bool: the tokens whose characters ``[start, end)`` overlap any of ``spans``."""
    hit = np.zeros(len(offsets), dtype=bool)
    if not spans or not len(offsets):
        return hit
    starts, ends = np.asarray(offsets, dtype=np.int64).T
    for a, b in spans:
        hit |= (starts < b) & (ends > a)
    return hit


def token_scope(hits: np.ndarray, mode: str = "after", window: int = 32) -> np.ndarray:
    """``(n,)`` int8: the tokens a chunk's label applies to, given the tokens that carry evidence (``hits``).

    A causal model's residual at token ``t`` sees tokens ``<= t`` only, so a chunk-level label is learnable there
    only once the evidence has been read. ``after``: every token from the first evidence token on; ``window``: each
    evidence token and the ``window - 1`` tokens after it.
    """
    hits = np.asarray(hits, dtype=bool)
    if mode == "after":
        return np.maximum.accumulate(hits).astype(np.int8) if hits.size else hits.astype(np.int8)
    if mode == "window":
        if window < 1:
            raise StructuredConfigError("scope.window", f"expected >= 1, got {window}")
        # Tokens since the last hit (inclusive count): in scope while fewer than `window`.
        idx = np.arange(hits.size)
        last = np.maximum.accumulate(np.where(hits, idx, -1))
        return ((last >= 0) & (idx - last < window)).astype(np.int8)
    raise StructuredConfigError("scope.mode", f"expected one of {SCOPE_MODES}, got {mode!r}")


__all__ = [
    "BOS",
    "EOS",
    "IGNORE_INDEX",
    "PAD",
    "SCOPE_MODES",
    "SCOPE_PREFIX",
    "span_hits",
    "token_scope",
    "tokenize_blocks",
    "train_bpe_tokenizer",
]
