"""Token-level labels (``data.token_scope``): keyword evidence spans -> per-token scope columns -> the trainer's
regularizers act on the scoped tokens of a labelled chunk only."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from test_lm_training import labels_config, tiny_recipe

from structured_hf.data.collators import LMBlockCollator, scope_labels
from structured_hf.data.lm_data import LMDataSpec, mask_flagged_tokens
from structured_hf.data.text_labelers import KeywordLabeler
from structured_hf.data.tokenizer import span_hits, token_scope
from structured_hf.errors import StructuredConfigError
from structured_hf.sites import capture_modules, resolve_sites
from structured_hf.training.recipe import build_lm_datasets, build_trainer, parse_recipe

SCOPE = {"labeler": "keywords", "mode": "after"}


def test_scope_modes_follow_the_evidence():
    hits = np.array([0, 0, 1, 0, 0, 0, 1, 0], dtype=bool)
    assert token_scope(hits, "after").tolist() == [0, 0, 1, 1, 1, 1, 1, 1]
    assert token_scope(hits, "window", window=2).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert token_scope(hits, "window", window=1).tolist() == hits.astype(int).tolist()
    assert token_scope(np.zeros(5, dtype=bool), "after").tolist() == [0] * 5
    assert token_scope(np.zeros(0, dtype=bool), "after").tolist() == []
    with pytest.raises(StructuredConfigError, match="scope.mode"):
        token_scope(hits, "before")
    with pytest.raises(StructuredConfigError, match="scope.window"):
        token_scope(hits, "window", window=0)


def test_span_hits_marks_overlapping_tokens():
    offsets = [(0, 3), (3, 8), (8, 9), (9, 14)]
    assert span_hits(offsets, [(4, 6)]).tolist() == [False, True, False, False]
    assert span_hits(offsets, [(2, 9)]).tolist() == [True, True, True, False]
    assert span_hits(offsets, []).tolist() == [False] * 4


def test_keyword_spans_index_the_original_text():
    labeler = KeywordLabeler(
        "kw",
        {
            "violence": {
                "words": ["slay*", "sword"],
                "exclude": [r"slew the (lamb|ram)"],
                "patterns": ["put (him|them) to death"],
            }
        },
    )
    # The excluded idiom comes first, so blanking it must keep the later offsets of the original text.
    text = "He slew the lamb. Then they slayed him with a sword and put them to death."
    spans = labeler.spans(text, "violence")
    assert [text[a:b] for a, b in spans] == ["slayed", "sword", "put them to death"]
    assert len(spans) == labeler.count(text, "violence")
    assert labeler.spans("a quiet morning", "violence") == []


def test_scope_columns_mark_tokens_from_the_first_keyword_on(tmp_path):
    recipe = parse_recipe(tiny_recipe(tmp_path, **{"data.token_scope": SCOPE}))
    _, tokenizer, blocks = build_lm_datasets(recipe)
    train = blocks["train"].with_format("numpy")
    scope, mask = np.asarray(train["scope_violence"]), np.asarray(train["attention_mask"])
    probs = np.asarray(train["prob_violence"])
    assert not (scope & (mask == 0)).any(), "padding is never in scope"
    assert not scope[probs == 0].any(), "chunks without a keyword have no scoped token"
    # 'after' scopes switch off only where the padding starts
    assert ((np.diff(scope, axis=1) >= 0) | (mask[:, 1:] == 0)).all()
    labelled = np.flatnonzero(scope.any(axis=1) & (np.asarray(train["input_ids"])[:, 0] == tokenizer.bos_token_id))
    assert len(labelled) > 10
    keywords = KeywordLabeler("keywords", labels_config(tmp_path / "corpus")["labelers"]["keywords"]["lexicon"])
    for i in labelled[:20]:
        ids, first = train[int(i)]["input_ids"], int(np.argmax(scope[i]))
        block = tokenizer.decode(ids, skip_special_tokens=True)
        # nothing before the first scoped token is evidence, and that token is part of a keyword match
        assert keywords.count(tokenizer.decode(ids[:first], skip_special_tokens=True), "violence") == 0
        piece = tokenizer.decode(ids[first : first + 1]).strip().lower()
        assert piece and any(piece in m.lower() for m in keywords.matches(block, "violence"))


def test_token_scope_errors_name_the_field(tmp_path):
    with pytest.raises(StructuredConfigError, match="data.token_scope.labeler"):
        parse_recipe(tiny_recipe(tmp_path, **{"data.token_scope": {"mode": "after"}}))
    with pytest.raises(StructuredConfigError, match="data.token_scope.mode"):
        parse_recipe(tiny_recipe(tmp_path, **{"data.token_scope": {"labeler": "keywords", "mode": "all"}}))
    with pytest.raises(StructuredConfigError, match="data.token_scope.window"):
        LMDataSpec.from_dict({"token_scope": {"labeler": "keywords", "mode": "window", "window": 0}})
    with pytest.raises(StructuredConfigError, match="unknown keys"):
        LMDataSpec.from_dict({"token_scope": {"labeler": "keywords", "span": 3}})
    recipe = parse_recipe(tiny_recipe(tmp_path, **{"data.token_scope": {"labeler": "vader"}}))
    with pytest.raises(StructuredConfigError, match="no labeler 'vader'"):
        build_lm_datasets(recipe)


def test_regularizers_average_over_scoped_tokens_only(tmp_path):
    recipe = parse_recipe(tiny_recipe(tmp_path, **{"data.token_scope": SCOPE, "training.max_steps": 1}))
    trainer = build_trainer(recipe)
    rows = trainer.train_dataset.__getitems__(list(range(16)))
    batch = LMBlockCollator(["violence"])(rows)
    scope = batch["token_scope"]["violence"]
    assert scope.shape == batch["input_ids"].shape and 0 < scope.sum() < batch["token_mask"].sum()
    model = trainer.model.eval()
    trainer._accumulate = lambda t: None

    def term(name: str, chunk_labels: torch.Tensor) -> float:
        trainer.hparams.update({"anchor": 0.0, "clear": 0.0, "reconstruction": 0.0, name: 1.0})
        inputs = dict(batch, concept_labels={"violence": chunk_labels.clone()}, token_scope={"violence": scope.clone()})
        with torch.no_grad():
            return float(trainer.compute_loss(model, inputs))

    site = "layers.0.residual_post"
    with torch.no_grad(), capture_modules(resolve_sites(model, [site])) as acts:
        model(input_ids=batch["input_ids"])
    x = acts[site]
    cos = x[..., 0] / x.norm(dim=-1)
    labels = torch.ones(16)
    token_labels = scope * batch["token_mask"]
    # anchor: mean of 1 - cos over the scoped tokens; clear: share of axis 0 over the others (padding is masked out
    # of the sum, the denominator counts every position that is not labelled)
    expected_anchor = float(((1 - cos) * token_labels).sum() / token_labels.sum())
    share = x[..., 0].square() / x.square().sum(-1)
    not_labelled = 1.0 - scope
    expected_clear = float((share * not_labelled * batch["token_mask"]).sum() / not_labelled.sum())
    assert term("anchor", labels) == pytest.approx(expected_anchor, rel=1e-5)
    assert term("clear", labels) == pytest.approx(expected_clear, rel=1e-5)
    # a chunk drawn unlabelled contributes none of its scoped tokens
    half = torch.tensor([1.0, 0.0] * 8)
    kept = scope * half[:, None]
    expected_half = float(((1 - cos) * kept).sum() / kept.sum())
    assert term("anchor", half) == pytest.approx(expected_half, rel=1e-5)


def test_scope_labels_turns_chunk_labels_into_token_labels():
    labels = {"violence": torch.tensor([1.0, 0.0]), "deception": torch.tensor([1.0, 1.0])}
    scope = {"violence": torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])}
    scope_labels(labels, scope)
    assert labels["violence"].tolist() == [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    assert labels["deception"].tolist() == [1.0, 1.0]  # no scope: still one label per chunk
    scope_labels(labels, scope)  # idempotent: already token-level labels are left alone
    assert labels["violence"].shape == (2, 3)


def test_token_level_filtering_masks_only_the_flagged_tokens_loss(tmp_path):
    """``data.filter.level: token`` keeps every chunk and every input token; the loss is masked exactly on the scoped
    tokens of chunks at or above the threshold, in the training split only."""
    scope = {"labeler": "keywords", "mode": "window", "window": 2}
    plain = parse_recipe(tiny_recipe(tmp_path, **{"data.token_scope": scope}))
    token = parse_recipe(
        tiny_recipe(
            tmp_path,
            **{
                "data.token_scope": scope,
                "data.filter": {"concepts": ["violence"], "threshold": 0.5, "level": "token"},
            },
        )
    )
    _, _, before = build_lm_datasets(plain)
    _, _, after = build_lm_datasets(token)
    b, a = before["train"].with_format("numpy"), after["train"].with_format("numpy")
    labels_b = np.asarray(b["labels"])
    flagged = (np.asarray(b["prob_violence"]) >= 0.5)[:, None] & (np.asarray(b["scope_violence"]) > 0)
    assert flagged.any() and (~flagged & (labels_b != -100)).any()
    # every block that keeps a target stays, in order, with all of its input tokens (the context is kept)
    kept = ((labels_b != -100) & ~flagged)[:, 1:].any(axis=1)
    assert np.array_equal(np.asarray(a["input_ids"]), np.asarray(b["input_ids"])[kept])
    labels_a, flagged_kept = np.asarray(a["labels"]), flagged[kept]
    assert (labels_a[flagged_kept] == -100).all()
    assert np.array_equal(labels_a[~flagged_kept], labels_b[kept][~flagged_kept])
    for split in ("validation", "test"):  # held-out text is never filtered
        assert np.array_equal(np.asarray(before[split]["labels"]), np.asarray(after[split]["labels"]))


def test_token_level_filtering_drops_blocks_left_without_a_target():
    """A block whose every target is flagged would give a 0/0 mean loss in a batch of its own: it is dropped, and
    the others keep their order and their unflagged targets."""
    blocks = datasets.Dataset.from_dict(
        {
            "input_ids": [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]],
            "labels": [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]],
            "prob_violence": [0.9, 0.9, 0.1],
            # block 0: only its position 0 (never a target) escapes the scope; block 1 keeps one target
            "scope_violence": [[0, 1, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1]],
        }
    )
    out = mask_flagged_tokens(blocks, ("violence",), 0.5).with_format("numpy")
    assert np.asarray(out["input_ids"]).tolist() == [[9, 10, 11, 12], [13, 14, 15, 16]]
    assert np.asarray(out["labels"]).tolist() == [[9, -100, -100, 12], [13, 14, 15, 16]]
    nothing_flagged = mask_flagged_tokens(blocks, ("violence",), 0.95)
    assert nothing_flagged["labels"] == blocks["labels"]


def test_token_level_filtering_errors_name_the_field(tmp_path):
    with pytest.raises(StructuredConfigError, match=r"data\.filter\.level: token-level filtering .* data\.token_scope"):
        parse_recipe(tiny_recipe(tmp_path, **{"data.filter": {"concepts": ["violence"], "level": "token"}}))
    with pytest.raises(StructuredConfigError, match=r"data\.filter\.level: expected one of \['document', 'token'\]"):
        parse_recipe(tiny_recipe(tmp_path, **{"data.filter": {"concepts": ["violence"], "level": "sentence"}}))
