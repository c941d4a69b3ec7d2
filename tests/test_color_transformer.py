"""Color-operation tasks and the color transformer (M3): data, model contracts, anchoring in the residual stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel

import structured_hf  # noqa: F401
from structured_hf import StructuredConfigError
from structured_hf.data.color_tasks import apply_operation, build_color_task_splits, linear_to_srgb
from structured_hf.evaluation.color_tasks import concept_placement, per_operation_errors
from structured_hf.models import ColorTransformerConfig, ColorTransformerModel
from structured_hf.sites import capture, site_dims
from structured_hf.training import build_trainer, parse_recipe

RED, BLUE, BLACK, WHITE = ([1.0, 0.0, 0.0],), ([0.0, 0.0, 1.0],), ([0.0, 0.0, 0.0],), ([1.0, 1.0, 1.0],)


def test_operations_by_hand():
    half = float(linear_to_srgb(np.asarray(0.5)))  # sRGB of 50 % linear light
    assert half == pytest.approx(0.735357, abs=1e-6)
    assert apply_operation("mix", np.asarray(RED), np.asarray(BLUE)) == pytest.approx(np.asarray([[half, 0.0, half]]))
    assert apply_operation("complement", np.asarray(RED)) == pytest.approx(np.asarray([[0.0, 1.0, 1.0]]))
    assert apply_operation("rotate", np.asarray(RED)) == pytest.approx(np.asarray([[0.0, 1.0, 0.0]]))
    assert apply_operation("lighten", np.asarray(BLACK)) == pytest.approx(np.asarray([[half] * 3]))
    assert apply_operation("lighten", np.asarray(WHITE)) == pytest.approx(np.asarray([[1.0] * 3]))
    with pytest.raises(StructuredConfigError, match="unknown operation"):
        apply_operation("blend", np.asarray(RED))


def test_splits_hold_out_combinations():
    splits = build_color_task_splits(grid_size=4, pair_grid_size=3, labelers={"red": {"scale": 1.0, "power": 2.0}})

    def keys(ds):
        out = set()
        for op, colors in zip(ds["op"], ds["colors"]):
            a, b = tuple(np.round(colors[0], 4)), tuple(np.round(colors[1], 4))
            out.add((op, frozenset([a, b]) if op == 0 else a))
        return out

    train, test = keys(splits["train"]), keys(splits["test"])
    assert train and test and not (train & test), "a test combination (unordered for mix) is never trained on"
    # Every operation is equally likely to be drawn in training despite mix having many more combinations.
    weights = np.asarray(splits["train"]["sample_weight"])
    ops = np.asarray(splits["train"]["op"])
    totals = [weights[ops == k].sum() for k in range(4)]
    assert totals == pytest.approx([totals[0]] * 4)
    p = np.asarray(splits["train"]["prob_red"])
    assert p.max() == pytest.approx(1.0) and p.min() == 0.0


def _tiny(**kw):
    return ColorTransformerConfig(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, **kw)


def test_model_sites_masking_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ColorTransformerModel(_tiny()).eval()
    assert site_dims(model)["layers.1.attn.q"] == 16 and "layers.0.residual_pre" in site_dims(model)
    ops = torch.tensor([1, 1])
    colors = torch.rand(2, 2, 3)
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    with capture(model, ["layers.0.attn.k", "layers.1.residual_post"]) as acts:
        out = model(op_ids=ops, colors=colors, operand_mask=mask).prediction
    assert acts["layers.0.attn.k"].shape == (2, 4, 16)
    other = colors.clone()
    other[:, 1] = torch.rand(2, 3)
    assert torch.equal(model(op_ids=ops, colors=other, operand_mask=mask).prediction, out), "masked operand ignored"
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded(op_ids=ops, colors=colors, operand_mask=mask).prediction, out)
    with pytest.raises(StructuredConfigError, match="colors"):
        model(op_ids=ops, colors=torch.rand(2, 3))


def test_hypersphere_variant_keeps_the_stream_on_the_sphere():
    torch.manual_seed(0)
    model = ColorTransformerModel(_tiny(norm="hypersphere")).eval()
    with capture(model, ["layers.1.residual_post"]) as acts:
        model(op_ids=torch.tensor([0, 2]), colors=torch.rand(2, 2, 3))
    assert torch.allclose(acts["layers.1.residual_post"].norm(dim=-1), torch.ones(2, 4), atol=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(Exception, match="num_heads"):
        ColorTransformerConfig(hidden_size=10, num_heads=3)
    with pytest.raises(Exception, match="unknown site"):
        ColorTransformerConfig(num_layers=2, concepts=[{"name": "r", "site": "layers.5.residual_post", "axes": [0]}])


def _recipe(tmp_path, steps: int, positions=None) -> dict:
    anchor = {"name": "anchor-red", "loss": "angular_anchor", "concept": "red", "label": "red", "weight": 0.3}
    if positions is not None:
        anchor["positions"] = positions
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
        "data": {"task": {"grid_size": 5, "pair_grid_size": 4}, "labels": {"red": {"scale": 1.0, "power": 4.0}}},
        "regularizers": [
            anchor,
            {
                "name": "clear",
                "loss": "anti_subspace",
                "concept": "red-axis",
                "label": "not:red",
                "params": {"relative": True},
                "weight": 0.3,
            },
        ],
        "training": {
            "max_steps": steps,
            "per_device_train_batch_size": 64,
            "learning_rate": 3.0e-3,
            "logging_steps": 20,
            "save_strategy": "no",
            "disable_tqdm": True,
        },
    }


def test_anchoring_puts_red_on_its_axis_at_the_anchored_layer_only(tmp_path):
    """Short real run: red-involving tokens align with axis 0 at the anchored site (block 1's output), not upstream
    (block 0's output, which no term constrains; downstream sites would inherit the direction through the residual
    connection)."""
    trainer = build_trainer(parse_recipe(_recipe(tmp_path, 250)))
    trainer.train()
    rows = [r for r in trainer.state.log_history if "term/clear" in r]
    assert rows and all(np.isfinite(r["term/clear"]) for r in rows)
    splits = build_color_task_splits(grid_size=5, pair_grid_size=4)
    placement = concept_placement(trainer.model, splits["validation"])["red"]
    anchored, free = placement["layers.1.residual_post"], placement["layers.0.residual_post"]
    assert anchored["anchored"] and not free["anchored"]
    assert anchored["cosine_red"] > 0.8, placement
    assert anchored["cosine_red"] > free["cosine_red"] + 0.2
    assert anchored["share_far"] < 0.05, "axis 0 is kept clear for examples far from red"
    errors = per_operation_errors(trainer.model, splits["test"], ["mix", "complement", "rotate", "lighten"])
    assert all(np.isfinite(v["all"]) and v["n"] > 0 for v in errors.values())


def test_regularizer_positions_select_tokens(tmp_path):
    trainer = build_trainer(parse_recipe(_recipe(tmp_path, 1, positions=[3])))
    assert trainer.bound_regularizers[0].spec.positions == (3,)
    with pytest.raises(StructuredConfigError, match=r"positions"):
        parse_recipe(_recipe(tmp_path, 1, positions="last"))
