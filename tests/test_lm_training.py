"""M4 training half: structured_gpt recipes, anchored LM training on weak-labelled text, and the surprisal evaluation
(forget/retain losses before and after suppression and deletion, relearning, the post-hoc baseline direction)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from structured_hf.data.collators import LMBlockCollator
from structured_hf.data.lm_data import LMDataSpec
from structured_hf.errors import StructuredConfigError
from structured_hf.evaluation.language import (
    heldout_sets,
    lm_relearning_attack,
    mean_difference_direction,
)
from structured_hf.experiment import run_experiment
from structured_hf.families.structured_gpt import run as run_structured_gpt_experiment
from structured_hf.training.recipe import build_lm_datasets, build_trainer, parse_recipe

VIOLENT = [
    "the soldiers drew the sword and slew the enemy in battle",
    "they fought a battle and many were slain",
    "he took a spear and killed the guard",
    "the army smote the city with the sword",
    "war came and the warriors fought with spears",
]
CALM = [
    "the farmer planted wheat in the green field",
    "she baked bread and shared it with her neighbours",
    "the children sang songs by the river",
    "an old man walked slowly to the market at dawn",
    "the shepherd counted his sheep under the stars",
    "rain fell softly on the olive trees",
]


def write_corpus(folder, n_docs: int = 60, seed: int = 0) -> None:
    """Documents of short paragraphs; about a quarter of the paragraphs are violent."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        paragraphs = []
        for _ in range(8):
            pool = VIOLENT if rng.random() < 0.25 else CALM
            paragraphs.append(". ".join(rng.choice(pool) for _ in range(2)).capitalize() + ".")
        (folder / f"doc{d:03d}.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")


def labels_config(folder) -> dict:
    return {
        "source": {"files": str(folder / "*.txt")},
        "chunking": {"max_length": 120, "length_unit": "chars", "unit": "paragraph"},
        "splits": {"validation": 0.15, "test": 0.25, "seed": 0},
        "concepts": {"violence": {}},
        "labelers": {
            "keywords": {
                "type": "keyword",
                "lexicon": {
                    "violence": {
                        "words": [
                            "sword",
                            "slew",
                            "slain",
                            "battle",
                            "killed",
                            "spear*",
                            "smote",
                            "fought",
                            "war",
                            "warriors",
                        ],
                        "p_per_match": 0.6,
                        "max_prob": 0.9,
                    }
                },
            }
        },
        "combine": {"rule": "noisy_or"},
        "calibration_set": "default",
    }


def tiny_recipe(tmp_path, **overrides) -> dict:
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        write_corpus(corpus)
    recipe = {
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "model": {
            "type": "structured_gpt",
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "max_position_embeddings": 48,
            "concepts": [
                {"name": "violence", "site": "layers.0.residual_post", "direction": {"one_hot": 0, "width": 32}},
                {"name": "violence-axis", "site": "layers.0.residual_post", "axes": [0]},
            ],
        },
        "data": {"text": {"labels_config": labels_config(corpus)}, "tokenizer": {"vocab_size": 300}, "block_size": 48},
        "regularizers": [
            {"name": "anchor", "loss": "angular_anchor", "concept": "violence", "label": "violence", "weight": 0.1},
            {
                "name": "clear",
                "loss": "anti_subspace",
                "concept": "violence-axis",
                "label": "not:violence",
                "params": {"relative": True},
                "weight": 0.1,
            },
        ],
        "schedules": {"learning_rate": {"interpolation": "linear", "keys": [[0, 3.0e-3], [300, 3.0e-4]]}},
        "training": {
            "max_steps": 300,
            "per_device_train_batch_size": 16,
            "learning_rate": 3.0e-3,
            "weight_decay": 0.0,
            "logging_steps": 50,
            "save_strategy": "no",
            "disable_tqdm": True,
            "report_to": "none",
        },
    }
    for key, value in overrides.items():
        node = recipe
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real anchored training run of a tiny GPT on the synthetic corpus (shared by the tests below), with
    token-level labels as in the shipped recipe: a violent chunk's label reaches its tokens from the first keyword on."""
    tmp_path = tmp_path_factory.mktemp("lm")
    recipe = parse_recipe(tiny_recipe(tmp_path, **{"data.token_scope": {"labeler": "keywords", "mode": "after"}}))
    metrics = run_experiment(recipe, figures=False)
    return tmp_path, recipe, metrics


def test_recipe_errors_name_the_field(tmp_path):
    with pytest.raises(StructuredConfigError, match="model.vocab_size"):
        parse_recipe(tiny_recipe(tmp_path, **{"model.vocab_size": 100}))
    with pytest.raises(StructuredConfigError, match="data.block_size"):
        parse_recipe(tiny_recipe(tmp_path, **{"data.block_size": 64}))  # longer than max_position_embeddings
    with pytest.raises(StructuredConfigError, match="unknown keys"):
        parse_recipe(tiny_recipe(tmp_path, **{"data.grid": 8}))
    with pytest.raises(StructuredConfigError, match="data.filter.concepts"):
        parse_recipe(tiny_recipe(tmp_path, **{"data.filter": {"concepts": ["kindness"]}}))
    with pytest.raises(StructuredConfigError, match=r"regularizers\[0\].label"):
        parse_recipe(
            tiny_recipe(
                tmp_path, regularizers=[{"loss": "angular_anchor", "concept": "violence", "label": "deception"}]
            )
        )
    with pytest.raises(StructuredConfigError, match="data.text.labels_config"):
        parse_recipe(tiny_recipe(tmp_path, **{"data.text": {"labels_config": str(tmp_path / "none.yaml")}}))
    with pytest.raises(StructuredConfigError, match="data.tokenizer.vocab_size"):
        LMDataSpec.from_dict({"tokenizer": {"vocab_size": "big"}})


def test_filter_baseline_drops_labelled_training_chunks_only(tmp_path):
    recipe = parse_recipe(tiny_recipe(tmp_path))
    full, tok_full, _ = build_lm_datasets(recipe)
    filtered_recipe = parse_recipe(
        tiny_recipe(tmp_path, **{"data.filter": {"concepts": ["violence"], "threshold": 0.5}})
    )
    filtered, tok_filtered, blocks = build_lm_datasets(filtered_recipe)
    probs = np.asarray(full["train"]["prob_violence"])
    assert len(filtered["train"]) == int((probs < 0.5).sum()) < len(full["train"])
    assert max(filtered["train"]["prob_violence"]) < 0.5
    assert filtered["test"]["text"] == full["test"]["text"]  # held-out text is never filtered
    # one vocabulary for both runs, so their per-token losses compare directly
    assert tok_filtered.get_vocab() == tok_full.get_vocab()
    assert len(blocks["train"]) >= len(filtered["train"])


def test_padding_never_reaches_the_regularizers(tmp_path):
    recipe = parse_recipe(tiny_recipe(tmp_path, **{"training.max_steps": 1}))
    trainer = build_trainer(recipe)
    rows = trainer.train_dataset.__getitems__(list(range(8)))
    batch = LMBlockCollator(["violence"])(rows)
    assert (batch["token_mask"] == 0).any(), "the tiny corpus should give padded blocks"
    batch["concept_labels"] = {"violence": torch.ones(8)}
    trainer.model.eval()

    def terms(b):
        trainer._accumulate = lambda t: None
        trainer.hparams.update({"anchor": 1.0, "clear": 0.0, "reconstruction": 0.0})
        with torch.no_grad():
            return float(trainer.compute_loss(trainer.model, dict(b, concept_labels=dict(b["concept_labels"]))))

    before = terms(batch)
    changed = dict(batch)
    ids = batch["input_ids"].clone()
    ids[batch["token_mask"] == 0] = 7  # different tokens at padded positions
    changed["input_ids"] = ids
    assert terms(changed) == pytest.approx(before, abs=1e-7)
    # and a real token does move the term
    ids2 = batch["input_ids"].clone()
    ids2[:, 1] = 7
    assert terms(dict(batch, input_ids=ids2)) != pytest.approx(before, abs=1e-6)


def test_anchored_run_saves_model_tokenizer_and_places_the_concept(trained):
    tmp_path, _recipe, metrics = trained
    out = tmp_path / "run"
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tokenizer("He slew them")["input_ids"][0] == tokenizer.bos_token_id
    assert model.config.vocab_size == len(tokenizer) and model.config.pad_token_id == tokenizer.pad_token_id
    assert metrics["eval_perplexity"] < 20.0  # the synthetic corpus is very repetitive; untrained is ~300
    # the perplexity is the language model's alone: the regularizer terms are in the objective, not in eval_loss
    assert metrics["eval_perplexity"] == pytest.approx(np.exp(metrics["eval_loss"]))
    assert metrics["eval_objective"] > metrics["eval_loss"] + 1e-3
    _, _, blocks = build_lm_datasets(_recipe)
    val = blocks["validation"].with_format("torch")
    with torch.no_grad():  # Trainer's eval_loss: the mean of per-batch mean token losses, weighted by batch size
        losses = [
            model(input_ids=val[i : i + 8]["input_ids"].long(), labels=val[i : i + 8]["labels"].long()).loss
            * len(val[i : i + 8]["input_ids"])
            for i in range(0, len(val), 8)
        ]
    assert metrics["eval_loss"] == pytest.approx(float(sum(losses)) / len(val), rel=1e-4)
    report = json.loads((out / "language_evaluation.json").read_text())
    assert report["sets"]["forget:violence"]["chunks"] > 5 and report["sets"]["retain"]["chunks"] > 5
    cos = report["cosines"]["violence"]
    # anchoring put violent text along axis 0 and kept it clear elsewhere
    assert cos["forget:violence"] > 0.5 and cos["retain"] < 0.25
    delta = report["delta"]
    # zeroing the reserved axis at the site hurts the forget set more than the retain set
    assert delta["zero:violence"]["forget:violence"] > delta["zero:violence"]["retain"] + 0.05
    assert abs(delta["suppress:violence"]["retain"]) < 0.1 < delta["suppress:violence"]["forget:violence"]
    assert "ablate:violence" in report["loss"]
    assert (out / "language_evaluation.md").read_text().startswith("| variant |")
    card = (out / "README.md").read_text()
    assert "library_name: structured_hf" in card and "| ablate:violence |" in card and "{{" not in card
    assert "from the first of the `keywords` labeler's matches on" in card  # the token-level labels are described
    assert "| violence | `layers.0.residual_post` | axis 0 of 32 (one-hot) |" in card  # not 32 numbers
    assert "tags:\n- structured_hf" in card and "- unlearning" in card
    assert f"{metrics['eval_perplexity']:.4g}"[:4] in card


def test_heldout_sets_relearning_and_posthoc_direction(trained):
    tmp_path, _recipe, _ = trained
    out = tmp_path / "run"
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    import datasets

    test = datasets.load_from_disk(str(out / "heldout"))
    sets = heldout_sets(test, ["violence"])
    assert all(p >= 0.5 for p, t in zip(test["prob_violence"], test["text"]) if t in sets["forget:violence"])
    direction = mean_difference_direction(
        model, tokenizer, sets["forget:violence"], sets["retain"], "layers.0.residual_post"
    )
    assert direction.shape == (32,) and int(direction.abs().argmax()) == 0  # it finds the anchored axis
    attack = lm_relearning_attack(
        model,
        tokenizer,
        sets["forget:violence"][:8],
        {"forget": sets["forget:violence"]},
        steps=10,
        eval_every=5,
        lr=1e-3,
    )
    assert attack["steps"] == [0, 5, 10] and len(attack["forget"]) == 3
    assert attack["lowest"]["forget"] <= attack["forget"][0]
    with pytest.raises(StructuredConfigError, match="empty"):
        heldout_sets(test.select(range(1)), ["violence"])


def test_comparison_table_against_a_posthoc_baseline(trained, tmp_path):
    import datasets

    from structured_hf.evaluation.language import compare_language_models, comparison_markdown
    from structured_hf.training.recipe import build_lm_datasets

    base_path, _, _ = trained
    unanchored_recipe = parse_recipe(
        tiny_recipe(base_path, **{"regularizers": [], "training.max_steps": 120, "output_dir": str(tmp_path / "plain")})
    )
    run_structured_gpt_experiment(unanchored_recipe, figures=False, evaluate=False)
    out = base_path / "run"
    anchored = AutoModelForCausalLM.from_pretrained(out)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(tmp_path / "plain").get_vocab() == tokenizer.get_vocab()
    chunks, _, _ = build_lm_datasets(unanchored_recipe)
    test = datasets.load_from_disk(str(out / "heldout"))
    result = compare_language_models(
        anchored,
        tokenizer,
        test,
        chunks["train"],
        "violence",
        unanchored=plain,
        filtered=plain,
        attack_chunks=8,
        attack_steps=4,
        eval_every=2,
    )
    rows = result["rows"]
    assert set(rows) == {
        "anchored",
        "anchored + suppress:violence",
        "anchored + zero:violence",
        "anchored + ablate",
        "(a) unanchored",
        "(a) unanchored + suppress post-hoc direction",
        "(a) unanchored + project out",
        "(b) data filtering",
    }
    # each variant's delta is measured against its own model's baseline
    zero = rows["anchored + zero:violence"]  # axis 0 of the site zeroed at inference: same weights, other losses
    assert zero["delta"]["forget:violence"] != 0.0
    a = rows["anchored + ablate"]
    assert a["delta"]["forget:violence"] == pytest.approx(
        a["loss"]["forget:violence"] - rows["anchored"]["loss"]["forget:violence"]
    )
    assert set(result["relearning"]) == {"anchored + ablate", "(a) unanchored + project out", "(b) data filtering"}
    assert all(r["steps"] == [0, 2, 4] for r in result["relearning"].values())
    table = comparison_markdown(result)
    assert "| (a) unanchored + project out |" in table and "lowest forget loss" in table


def test_evaluate_script_on_a_gpt_folder_refreshes_table_and_card(trained, monkeypatch):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "evaluate_script", Path(__file__).parent.parent / "scripts" / "evaluate.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    tmp_path, _, _ = trained
    out = tmp_path / "run"
    (out / "README.md").write_text("stale")
    assert (
        script.main(
            [
                "--model",
                str(out),
                "--output_dir",
                str(out),
                "--intervention",
                "repel:violence",
                "--prompt",
                "The soldiers drew",
            ]
        )
        == 0
    )
    report = json.loads((out / "language_evaluation.json").read_text())
    assert "repel:violence" in report["loss"] and "ablate:violence" in report["loss"]
    assert report["generations"]["baseline"][0]["prompt"] == "The soldiers drew"
    assert report["generations"]["baseline"][0]["continuation"]
    assert "| repel:violence |" in (out / "README.md").read_text()
    assert (
        script.main(["--model", str(out), "--output_dir", str(tmp_path / "x"), "--heldout", str(tmp_path / "missing")])
        == 2
    )
