"""M3 control: residual-stream / QK surgery on both transformer families, the per-operation control evaluation, the
relearning attack on the color transformer and its model card."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

import structured_hf  # noqa: F401
from structured_hf import StructuredConfigError
from structured_hf.concepts import ConceptMap
from structured_hf.data.color_tasks import build_color_task_splits
from structured_hf.evaluation.color_tasks import per_operation_errors
from structured_hf.evaluation.relearning import AttackConfig, transformer_relearning_study, transformer_relearning_table
from structured_hf.evaluation.transformer_control import control_evaluation, control_markdown
from structured_hf.interventions import ablate, project_out, prune
from structured_hf.models import ColorTransformerConfig, ColorTransformerModel
from structured_hf.models.structured_gpt import StructuredGPTConfig, StructuredGPTForCausalLM
from structured_hf.sites import capture
from structured_hf.training import build_trainer, parse_recipe

W = 16
RED = [
    {"name": "red", "site": "layers.1.residual_post", "direction": {"one_hot": 0, "width": W}},
    {"name": "red-axis", "site": "layers.1.residual_post", "axes": [0]},
    {"name": "other", "site": "layers.2.residual_post", "axes": [0]},
]
RESIDUAL = [f"layers.{i}.residual_{w}" for i in range(3) for w in ("pre", "post")]


def _color_model(norm: str = "pre") -> ColorTransformerModel:
    torch.manual_seed(0)
    return ColorTransformerModel(
        ColorTransformerConfig(hidden_size=W, num_layers=3, num_heads=2, intermediate_size=32, norm=norm, concepts=RED)
    ).eval()


def _inputs(n: int = 32):
    g = torch.Generator().manual_seed(1)
    return {"op_ids": torch.randint(4, (n,), generator=g), "colors": torch.rand(n, 2, 3, generator=g)}


def _gpt() -> StructuredGPTForCausalLM:
    torch.manual_seed(0)
    return StructuredGPTForCausalLM(
        StructuredGPTConfig(
            vocab_size=40,
            max_position_embeddings=16,
            hidden_size=W,
            num_layers=3,
            num_heads=2,
            concepts=[{"name": "violence", "site": "layers.1.residual_post", "direction": {"one_hot": 3, "width": W}}],
        )
    ).eval()


@pytest.mark.parametrize("norm", ["pre", "hypersphere"])
def test_residual_ablation_zeroes_the_axis_up_to_the_site_and_the_map_follows(norm):
    model = _color_model(norm)
    deleted = ablate(model, "red")
    with capture(deleted, RESIDUAL) as acts:
        out = deleted(**_inputs())
    for site in RESIDUAL[:4]:  # embeddings .. block 1's output (and block 2's input, the same tensor)
        assert torch.all(acts[site][..., 0] == 0), site
    assert acts["layers.2.residual_post"][..., 0].abs().max() > 0, "blocks after the site still write the axis"
    assert torch.isfinite(out.prediction).all()
    # Concepts on axis 0 of the span go; a concept on the same axis index after the span stays.
    assert [c["name"] for c in deleted.config.concepts] == ["other"]
    record = deleted.config.surgery[-1]
    assert record["op"] == "ablate" and record["axes"] == [0] and set(record["removed_concepts"]) == {"red", "red-axis"}
    assert model.config.concepts == RED and not getattr(model.config, "surgery", None)  # the input is untouched
    # Readers in the span are cleared too (LayerNorm gain/bias on the axis, input columns after it).
    b1 = deleted.layers[1]
    assert b1.attn_norm.weight[0] == 0 and torch.all(b1.attn.q_proj.weight[:, 0] == 0)
    assert torch.all(b1.mlp.down.weight[0] == 0) and torch.all(deleted.layers[2].mlp.down.weight[0] != 0)
    # Deleting at layers.2.residual_pre is deleting at layers.1.residual_post: the same weights.
    same = ablate(model, axes=[0], site="layers.2.residual_pre")
    for (name, a), b in zip(same.state_dict().items(), deleted.state_dict().values()):
        assert torch.equal(a, b), name


def test_structured_gpt_residual_ablation_and_round_trip(tmp_path):
    model = _gpt()
    ids = torch.randint(40, (2, 10), generator=torch.Generator().manual_seed(0))
    deleted = ablate(model, "violence")
    with capture(deleted, ["layers.1.residual_post", "layers.0.residual_pre"]) as acts:
        logits = deleted(ids).logits
    assert torch.all(acts["layers.1.residual_post"][..., 3] == 0) and torch.all(
        acts["layers.0.residual_pre"][..., 3] == 0
    )
    assert torch.isfinite(logits).all()
    # The output head reads after the span, so it is untied from the (edited) token embedding and kept as it was.
    assert deleted.config.tie_word_embeddings is False and torch.equal(deleted.lm_head.weight, model.lm_head.weight)
    assert model.lm_head.weight is model.wte.weight and model.config.tie_word_embeddings
    assert deleted.config.concepts == [] and deleted.config.surgery[-1]["removed_concepts"] == ["violence"]
    deleted.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.allclose(back(ids).logits, logits, atol=1e-6)
    assert back.config.concepts == [] and back.config.surgery == deleted.config.surgery
    # A deletion through the last block clears the head's columns as well, so the tie is kept.
    last = ablate(model, axes=[3], site="layers.2.residual_post")
    assert last.config.tie_word_embeddings and last.lm_head.weight is last.wte.weight
    with capture(last, ["layers.2.residual_post"]) as acts:
        assert torch.isfinite(last(ids).logits).all()
    assert torch.all(acts["layers.2.residual_post"][..., 3] == 0)


def test_residual_mid_ablation_deletes_up_to_the_attention_of_the_block():
    model = _gpt()
    ids = torch.randint(40, (2, 10), generator=torch.Generator().manual_seed(1))
    deleted = ablate(model, axes=[3], site="layers.1.residual_mid")
    sites = ["layers.0.residual_pre", "layers.0.residual_mid", "layers.1.residual_mid", "layers.1.residual_post"]
    with capture(deleted, sites) as acts:
        deleted(ids)
    for site in sites[:3]:
        assert torch.all(acts[site][..., 3] == 0), site
    # Block 1's MLP still writes the axis (it lies after the site), its attention does not.
    assert acts["layers.1.residual_post"][..., 3].abs().max() > 0
    b1 = deleted.layers[1]
    assert torch.all(b1.attn.o_proj.weight[3] == 0) and torch.all(b1.mlp.down.weight[3] != 0)
    assert b1.ln_2.weight[3] == 0 and torch.all(b1.mlp.up.weight[:, 3] == 0)  # the MLP reads inside the span
    assert torch.all(deleted.layers[2].attn.q_proj.weight[:, 3] != 0)
    # The mid site of block 1 lies strictly inside the span of residual_post: that deletion zeroes it too.
    whole = ablate(model, axes=[3], site="layers.1.residual_post")
    with capture(whole, ["layers.1.residual_mid"]) as acts:
        whole(ids)
    assert torch.all(acts["layers.1.residual_mid"][..., 3] == 0)


def test_qk_ablation_project_out_and_errors(tmp_path):
    model = _color_model()
    qk = ablate(model, axes=[1, 5], site="layers.0.attn.q")
    with capture(qk, ["layers.0.attn.q", "layers.0.attn.k"]) as acts:
        qk(**_inputs())
    assert torch.all(acts["layers.0.attn.q"][..., [1, 5]] == 0) and acts["layers.0.attn.k"][..., 1].abs().max() > 0
    assert [c["name"] for c in qk.config.concepts] == ["red", "red-axis", "other"]  # none lives at that site
    qk.save_pretrained(tmp_path)
    assert AutoModel.from_pretrained(tmp_path).config.surgery[-1]["site"] == "layers.0.attn.q"
    v = torch.randn(W, generator=torch.Generator().manual_seed(2))
    projected = project_out(model, v, site="layers.1.residual_post", name="post-hoc")
    with capture(projected, ["layers.1.residual_post", "layers.0.residual_pre"]) as acts:
        projected(**_inputs())
    for x in acts.values():
        assert (x @ (v / v.norm())).abs().max() < 1e-5
    with pytest.raises(StructuredConfigError, match="residual-stream site.*LayerNorm"):
        prune(model, "red")
    with pytest.raises(StructuredConfigError, match="query/key site"):
        prune(model, axes=[0], site="layers.0.attn.k")
    with pytest.raises(StructuredConfigError, match="layers.7.residual_post"):
        ablate(model, axes=[0], site="layers.7.residual_post")
    with pytest.raises(StructuredConfigError, match="out of range"):
        ablate(model, axes=[W], site="layers.0.residual_post")


def _recipe(tmp_path, steps: int) -> dict:
    clear = {
        "loss": "anti_subspace",
        "concept": "red-axis",
        "label": "not:red",
        "params": {"relative": True},
        "weight": 0.3,
    }
    return {
        "seed": 0,
        "output_dir": str(tmp_path / "ct"),
        "model": {
            "type": "color_transformer",
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "intermediate_size": 64,
            "concepts": [
                {"name": "red", "site": "layers.1.residual_post", "direction": {"one_hot": 0, "width": 32}},
                {"name": "red-axis", "site": "layers.1.residual_post", "axes": [0]},
            ],
        },
        "data": {"task": {"grid_size": 6, "pair_grid_size": 4}, "labels": {"red": {"scale": 1.0, "power": 4.0}}},
        "regularizers": [
            {"name": "anchor-red", "loss": "angular_anchor", "concept": "red", "label": "red", "weight": 0.3},
            {"name": "clear", **clear},
            {"name": "clear-embed", "site": "layers.0.residual_pre", **clear},
            {"name": "clear-0", "site": "layers.0.residual_post", **clear},
        ],
        "training": {
            "max_steps": steps,
            "per_device_train_batch_size": 64,
            "learning_rate": 3.0e-3,
            "logging_steps": 50,
            "save_strategy": "no",
            "disable_tqdm": True,
            "report_to": "none",
        },
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny anchored color transformer after a short real training (fixed seed)."""
    tmp = tmp_path_factory.mktemp("ctrl")
    recipe = parse_recipe(_recipe(tmp, 800))
    trainer = build_trainer(recipe)
    trainer.train()
    return recipe, trainer.model.eval()


def test_deleting_red_hurts_red_involving_examples_more_than_far_ones(trained):
    _, model = trained
    test = build_color_task_splits(grid_size=6, pair_grid_size=4, labelers={"red": {"scale": 1.0, "power": 4.0}})[
        "test"
    ]
    report = control_evaluation(model, test)
    assert list(report["variants"]) == ["baseline", "suppress:red", "ablate:red"]
    for name in ("suppress:red", "ablate:red"):
        assert set(report["variants"][name]) == set(model.config.operations)
        assert set(report["summary"][name]) == {"min_red_ratio", "max_far_ratio", "meets_target"}
    assert all(report["variants"]["baseline"][op]["red_ratio"] == 1.0 for op in model.config.operations)
    # Measured (seed 0, 800 steps, ~10 s): on mix (148 red-involving test examples; the unary operations have 4-6)
    # ablate raises the red-involving error 6.9x and leaves the far one at 0.89x, suppression 4.4x and 0.93x
    # (seed 1: 9.3x / 1.02x and 7.7x / 1.00x). Asserted with margin.
    mix = report["variants"]["ablate:red"]["mix"]
    assert mix["red_ratio"] > 3.5 and mix["red_ratio"] > 3.0 * mix["far_ratio"]
    sup = report["variants"]["suppress:red"]["mix"]
    assert sup["red_ratio"] > 2.5 and sup["far_ratio"] < 1.3
    assert "ablate:red" in control_markdown(report)


def test_relearning_study_and_card_on_the_tiny_transformer(trained, tmp_path):
    recipe, model = trained
    attack = AttackConfig(steps=3, lr=1.0e-3, num_samples=16, batch_size=8, threshold=5.0e-3)
    study = transformer_relearning_study(recipe, "red", attack=attack, models={"anchored": model, "unanchored": model})
    assert set(study["rows"]) == {
        "anchored+ablated",
        "unanchored+projected",
        "anchored (not deleted)",
        "unanchored (not deleted)",
    }
    row = study["rows"]["anchored+ablated"]
    assert len(row["curves"]["concept"]) == 4 and row["min"] <= row["initial"]
    assert row["initial"] > study["rows"]["anchored (not deleted)"]["initial"]
    table = transformer_relearning_table(study)
    assert "| anchored+ablated |" in table and "steps to threshold" in table

    from structured_hf.evaluation.color_tasks import concept_placement
    from structured_hf.hub import CARD_RENDERERS, render_color_transformer_card

    splits = build_color_task_splits(grid_size=6, pair_grid_size=4, labelers={"red": {"scale": 1.0, "power": 4.0}})
    metrics = {
        "test_mse": per_operation_errors(model, splits["test"], model.config.operations),
        "concepts": concept_placement(model, splits["test"]),
        "control": control_evaluation(model, splits["test"]),
        "num_parameters": 1,
        "train_runtime_s": 1.0,
    }
    text = str(render_color_transformer_card(recipe, metrics, "user/ct", relearning=table))
    assert "library_name: structured_hf" in text and "| ablate:red |" in text and "| anchored+ablated |" in text
    assert "structured_color_transformer" in CARD_RENDERERS
    assert ConceptMap.parse(model.config.concepts)["red"].site in text


def test_evaluate_script_runs_the_control_evaluation_on_a_color_transformer(trained, tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    recipe, model = trained
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    (folder / "recipe.yaml").write_text(recipe.to_yaml())
    back = AutoModel.from_pretrained(folder).eval()
    assert ablate(back, "red").config.surgery[-1]["op"] == "ablate"
    script = Path(__file__).resolve().parents[1] / "scripts" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("evaluate_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "eval"
    assert (
        module.main(
            ["--model", str(folder), "--intervention", "axes:red-axis", "--output_dir", str(out), "--no_figures"]
        )
        == 0
    )
    report = json.loads((out / "control.json").read_text())
    assert list(report["variants"]) == ["baseline", "suppress:red", "ablate:red", "axes:red-axis"]
    assert "| ablate:red | mix |" in (out / "control.md").read_text()
    assert module.main(["--model", str(folder), "--prune", "red", "--output_dir", str(out)]) == 2
