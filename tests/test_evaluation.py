"""Evaluation: HSV similarity on hand-picked colors, r² scores, tables, variants, sweeps, relearning,
and a short real training run that checks the suppression claim."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from structured_hf import ColorAutoencoderConfig, ColorAutoencoderModel, StructuredConfigError
from structured_hf.data import NAMED_COLORS, rgb_grid
from structured_hf.evaluation import (
    ScoreSpec,
    build_variants,
    evaluate_variants,
    hsv_similarity,
    hue_angle,
    pearson_r,
    r2_score,
    reconstruct,
    render_latex,
    render_markdown,
    vibrancy,
    write_report,
)
from structured_hf.evaluation.relearning import (
    AttackConfig,
    concept_samples,
    mean_difference_direction,
    relearning_attack,
    unanchored_recipe,
)
from structured_hf.evaluation.sweep import pareto_front, parse_seeds, summarize_sweep
from structured_hf.training import parse_recipe

CONCEPTS = [
    {"name": "red", "site": "bottleneck", "direction": [1.0, 0.0, 0.0, 0.0], "prototypes": ["red"]},
    {"name": "hue", "site": "bottleneck", "axes": [0, 1], "prototypes": ["red", "green"]},
]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ColorAutoencoderModel(ColorAutoencoderConfig(bottleneck_dim=4, hidden_dim=8, concepts=CONCEPTS)).eval()


# ---- similarity and scores -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rgb, expected",
    [
        ((1.0, 0.0, 0.0), 1.0),  # the anchor itself
        ((0.0, 1.0, 1.0), 0.0),  # cyan: opposite hue, hue_sim = 0, r = 1
        ((1.0, 0.5, 0.0), 2 / 3),  # orange: θ = 30°, hue_sim = 2/3
        ((1.0, 0.0, 0.5), 2 / 3),  # pink: θ = 30° the other way round the wheel
        ((1.0, 1.0, 0.0), 1 / 3),  # yellow: θ = 60°
        ((0.0, 0.0, 1.0), 0.0),  # blue: θ = 120° > 90°
        ((0.5, 0.5, 0.5), 0.0),  # gray: (1 − |s1 − s2|) = 0
        ((0.5, 0.0, 0.0), 0.5),  # dark red: r = 3/4, hue_sim = 1 -> 1 · 1 · (1 − 0.5)
        ((1.0, 0.5, 0.5), 0.5),  # pale red: s = 0.5, v = 1: r = 3/4 -> 1 · (1 − 0.5) · 1
        ((0.5, 0.25, 0.25), 0.25),  # pale dark red: r = (0.25 + 1)/2, hue term 1, · 0.5 · 0.5
    ],
)
def test_hsv_similarity_hand_picked(rgb, expected):
    assert hsv_similarity(np.asarray([rgb]), "red")[0] == pytest.approx(expected, abs=1e-9)


def test_hsv_similarity_partial_hue_term():
    # A half-saturated orange (1, 0.75, 0.5): h = 30°, s = 0.5, v = 1. r = (0.5 + 1)/2 = 0.75, hue_sim = 2/3:
    # sim = (0.75 · 2/3 + 0.25) · (1 − 0.5) · 1 = 0.375
    assert hsv_similarity(np.asarray([[1.0, 0.75, 0.5]]), (1.0, 0.0, 0.0))[0] == pytest.approx(0.375)


def test_hue_angle_wraps_around():
    colors = np.asarray([[1.0, 0.0, 1 / 6], [1.0, 1 / 6, 0.0]])  # hues 350° and 10°
    assert hue_angle(colors, "red").tolist() == pytest.approx([10.0, 10.0])
    assert hue_angle(colors[:1], tuple(colors[1]))[0] == pytest.approx(20.0)


def test_vibrancy_and_pearson():
    assert vibrancy(np.asarray([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, 0.25, 0.25]])).tolist() == pytest.approx(
        [1.0, 0.0, 0.25]
    )
    assert pearson_r([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson_r([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson_r([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # hand: cov 1.0 / var 1.25
    assert math.isnan(pearson_r([1, 1, 1], [1, 2, 3]))
    sim = np.linspace(0, 1, 20)
    assert r2_score(sim**2 * 0.3, sim, 2.0)["r2"] == pytest.approx(1.0)
    assert r2_score(sim**2 * 0.3, sim, 1.0)["r2"] < 0.96


# ---- variants, tables -----------------------------------------------------------------------------------------------
def test_evaluate_variants_tables_and_bit_identity(model, tmp_path):
    variants = build_variants(model, ["suppress:red", "axes:hue", "prune:red"])
    assert [v.name for v in variants] == ["baseline", "suppress:red", "axes:hue", "prune:red"]
    assert variants[1].score == ScoreSpec("similarity", 2.0, "red")
    assert variants[2].score == ScoreSpec("vibrancy", 2.3)
    assert variants[3].score == ScoreSpec("similarity", 3.0, "red")
    result = evaluate_variants(variants, grid_size=5)
    assert set(result["named_color_mse"]) == {"baseline", "suppress:red", "axes:hue", "prune:red"}
    assert set(result["named_color_mse"]["baseline"]) == set(NAMED_COLORS)
    assert "baseline" not in result["named_color_delta"]
    for name, row in result["named_color_delta"].items():
        for color, delta in row.items():
            assert delta == pytest.approx(
                result["named_color_mse"][name][color] - result["named_color_mse"]["baseline"][color]
            )
    # The baseline MSE is the model's own, recomputed independently.
    named = np.asarray(list(NAMED_COLORS.values()))
    expected = ((reconstruct(model, named) - named) ** 2).mean(-1)
    assert list(result["named_color_mse"]["baseline"].values()) == pytest.approx(expected.tolist())
    assert set(result["scores"]) == {"suppress:red", "axes:hue", "prune:red"}
    assert all(0.0 <= s <= 1.0 for s in result["scores"].values())
    untouched = result["untouched"]["suppress:red"]
    z = variants[0].latents(named)
    assert untouched["colors"] == [n for n, x in zip(NAMED_COLORS, z[:, 0]) if x <= 0]
    assert untouched["bit_identical"] is True
    assert result["variants"]["prune:red"]["bottleneck_dim"] == 3
    paths = write_report(result, tmp_path)
    loaded = json.loads(paths["json"].read_text())
    assert loaded["named_color_mse"] == result["named_color_mse"]
    md = paths["markdown"].read_text()
    assert "| red |" in md and "`prune:red`" in md and "bit-identical: True" in md
    tex = paths["latex"].read_text()
    assert r"\begin{tabular}" in tex and r"\texttt{suppress:red}" in tex and "light gray" in tex


def test_tables_escape_and_nan():
    result = {
        "named_color_mse": {"baseline": {"a_b": 0.5}, "x%y": {"a_b": float("nan")}},
        "named_color_delta": {"x%y": {"a_b": float("nan")}},
        "score_details": {},
        "untouched": {},
        "grid_size": 3,
    }
    tex = render_latex(result)
    assert r"a\_b" in tex and r"x\%y" in tex and "n/a" in tex
    assert "n/a" in render_markdown(result)


def test_duplicate_variants_rejected(model):
    with pytest.raises(StructuredConfigError, match="listed twice"):
        build_variants(model, ["suppress:red", "suppress:red"])


# ---- sweeps --------------------------------------------------------------------------------------------------------
def test_parse_seeds_and_pareto():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(StructuredConfigError, match="--seeds"):
        parse_seeds("0-2,2")
    # objectives: (recon ↓, anchor ↓, score ↑); point 1 is dominated by point 0, point 3 has NaN score (worst).
    points = [[0.1, 0.1, 0.9], [0.2, 0.2, 0.8], [0.05, 0.3, 0.7], [0.01, 0.01, float("nan")]]
    assert pareto_front(points, [False, False, True]) == [0, 2, 3]
    runs = [
        {"seed": s, "reconstruction": p[0], "anchor_error": p[1], "scores": {"prune:red": p[2]}}
        for s, p in enumerate(points)
    ]
    summary = summarize_sweep(runs)
    assert summary["pareto_front"] == [0, 2, 3] and summary["pick"]["seed"] == 0
    assert summary["scores"]["prune:red"] == {"min": 0.7, "mean": pytest.approx(0.8), "max": 0.9, "n": 3}


# ---- relearning ----------------------------------------------------------------------------------------------------
def test_concept_samples_are_near_the_anchor_and_exclude_it():
    samples = concept_samples("red", 64, min_similarity=0.5, seed=3)
    assert samples.shape == (64, 3)
    assert (hsv_similarity(samples, "red") >= 0.5).all()
    assert (np.abs(samples - [1.0, 0.0, 0.0]).max(-1) > 1e-3).all()
    assert np.array_equal(samples, concept_samples("red", 64, min_similarity=0.5, seed=3))


def test_relearning_attack_records_curves(model):
    attack = AttackConfig(steps=30, lr=3.0e-2, threshold=0.05)
    red = np.asarray([[1.0, 0.0, 0.0]])
    out = relearning_attack(model, concept_samples("red", 64), {"prototype": red, "retain": rgb_grid(3)}, attack)
    curve = out["curves"]["prototype"]
    assert len(curve) == 31 and len(out["curves"]["retain"]) == 31
    assert curve[0] == pytest.approx(float(((reconstruct(model, red) - red) ** 2).mean()))
    assert out["min"] == min(curve) and curve[out["min_step"]] == out["min"]
    # Training on red-ish colors does bring the prototype's error down (the attack is real), and the input model is
    # left alone.
    assert out["min"] < 0.5 * curve[0]
    assert out["curves"]["prototype"][0] == pytest.approx(float(((reconstruct(model, red) - red) ** 2).mean()))
    if out["steps_to_threshold"] is not None:
        assert curve[out["steps_to_threshold"]] < 0.05 and all(c >= 0.05 for c in curve[: out["steps_to_threshold"]])


def test_mean_difference_direction_matches_hand_computation(model):
    colors = rgb_grid(3)
    p = np.linspace(0.0, 1.0, len(colors))
    acts = np.asarray(build_variants(model, [])[0].latents(colors))
    diff = (p[:, None] * acts).sum(0) / p.sum() - ((1 - p)[:, None] * acts).sum(0) / (1 - p).sum()
    assert mean_difference_direction(model, colors, p) == pytest.approx(diff / np.linalg.norm(diff), abs=1e-6)


def test_unanchored_recipe_drops_only_concept_terms(tiny_recipe):
    recipe = parse_recipe(tiny_recipe())
    plain = unanchored_recipe(recipe)
    assert [r["name"] for r in plain.regularizers] == ["separate"]
    assert len(recipe.regularizers) == 3  # the original is not modified


# ---- a short, real training run ------------------------------------------------------------------------------------
def test_trained_wheel_suppression_raises_red_error_and_spares_the_far_side(tiny_recipe):
    """300 real steps of the wheel recipe (seed 0): suppressing red multiplies red's error >= 10x while every named
    color with x·red <= 0 (cyan among them) reconstructs bit-identically, and the damage follows similarity to red."""
    from structured_hf.evaluation.relearning import train_recipe

    steps = 300
    raw = tiny_recipe(max_steps=steps)
    raw["model"]["hidden_dim"] = 16
    raw["data"]["train"] = {"grid": "rgb", "size": 6}
    raw["data"]["labels"] = {"red": {"scale": 0.5, "power": 4.0}, "vibrant": {"scale": 0.5, "power": 4.0}}
    raw["training"].update(per_device_train_batch_size=64, logging_steps=1000)
    raw["schedules"]["learning_rate"] = {"interpolation": "linear", "keys": [[0, 2.0e-2], [steps, 2.0e-3]]}
    model, _ = train_recipe(parse_recipe(raw))
    result = evaluate_variants(build_variants(model, ["suppress:red"]), grid_size=8)
    base, sup = result["named_color_mse"]["baseline"], result["named_color_mse"]["suppress:red"]
    assert base["red"] < 0.02, base  # it did learn to reconstruct red
    assert sup["red"] >= 10 * base["red"], (base["red"], sup["red"])
    untouched = result["untouched"]["suppress:red"]
    assert "cyan" in untouched["colors"] and untouched["bit_identical"]
    for color in untouched["colors"]:
        assert sup[color] == base[color]
    assert result["scores"]["suppress:red"] > 0.5


def _check_suppression_recipe(
    config_path, tmp_path, score_min: float, red_min: float, base_max: float, far_side: set[str]
) -> None:
    """Train a suppression recipe at seed 0 and check hard suppression and the b = 1.4 falloff: r²(MSE vs sim²) on the
    10³ grid, red's error under the falloff, baseline reconstruction, and far-side bit-identity."""
    from structured_hf.evaluation.relearning import train_recipe
    from structured_hf.training import load_recipe

    recipe = load_recipe(config_path, {"output_dir": str(tmp_path), "training.disable_tqdm": True})
    model, _ = train_recipe(recipe)
    strong = "suppress:red:a=0.0,b=1.4,p=0.0"
    result = evaluate_variants(build_variants(model, ["suppress:red", strong]), grid_size=10)
    base = result["named_color_mse"]["baseline"]
    assert max(base.values()) <= base_max, base
    assert result["scores"]["suppress:red"] >= score_min, result["scores"]
    assert result["scores"][strong] >= score_min, result["scores"]
    assert result["named_color_mse"][strong]["red"] >= red_min
    for name in ("suppress:red", strong):
        untouched = result["untouched"][name]
        assert far_side <= set(untouched["colors"]), untouched
        assert untouched["bit_identical"]


def test_not_red_labels_even_the_wheel_so_suppression_follows_similarity(repo_root, tmp_path):
    """The full ex2.4.3 recipe (1501 real steps, seed 0, ~8 s): with the green/blue half of the wheel labelled "not
    red", hard suppression of red gives r²(MSE vs sim²) >= 0.98 on the 10³ grid (ex2.4.1's recipe: 0.89 at seed 0),
    the b = 1.4 falloff keeps r² >= 0.98 and pushes red's error over 0.25, and every named color with x·red <= 0
    (the whole far side of the wheel) reconstructs bit-identically."""
    _check_suppression_recipe(
        repo_root / "configs/color_autoencoder/ex2.4.3-suppress-red-not-red-labels.yaml",
        tmp_path,
        score_min=0.98,
        red_min=0.25,
        base_max=2.0e-3,
        far_side={"green", "teal", "cyan", "azure", "blue"},
    )


def test_cone_anchors_make_suppression_follow_similarity(repo_root, tmp_path):
    """The full ex2.4.4 recipe (1501 real steps, seed 0, ~8 s): with yellow/magenta on the cone cos 1/3 around red and
    green/blue on cos -0.5, hard suppression and the b = 1.4 falloff both give r²(MSE vs sim²) >= 0.975 on the 10³
    grid (measured at seed 0: 0.984 and 0.987; 20 seeds: min 0.978 / 0.982, README M2), the falloff pushes red's
    error over 0.30, and the far side of the wheel reconstructs bit-identically."""
    _check_suppression_recipe(
        repo_root / "configs/color_autoencoder/ex2.4.4-suppress-red-cone-anchors.yaml",
        tmp_path,
        score_min=0.975,
        red_min=0.30,
        base_max=3.0e-3,
        far_side={"lime", "green", "teal", "cyan", "azure", "blue", "purple"},
    )


def test_linear_encoder_deletes_red_with_little_collateral(repo_root, tmp_path):
    """The full ex2.11 recipe (1501 real steps, seed 0, ~6 s): pruning red's axis gives r²(MSE vs sim³) 0.825 on the
    10³ grid, red 0.40, cyan 0.0022 and every named color outside red/orange/pink/yellow/magenta <= 0.005; pruning
    and ablation agree per color. (Seed 0 is not its best seed: 20 seeds give 0.825 / 0.903 / 0.961, README M2;
    cyan misses the 0.002 target at this seed.)"""
    from structured_hf.evaluation.relearning import train_recipe
    from structured_hf.training import load_recipe

    recipe = load_recipe(
        repo_root / "configs/color_autoencoder/ex2.11-delete-red-linear-encoder.yaml",
        {"output_dir": str(tmp_path), "training.disable_tqdm": True},
    )
    model, _ = train_recipe(recipe)
    result = evaluate_variants(build_variants(model, ["prune:red", "ablate:red"]), grid_size=10)
    base = result["named_color_mse"]["baseline"]
    pruned = result["named_color_mse"]["prune:red"]
    assert max(base.values()) <= 2.0e-3, base
    assert result["scores"]["prune:red"] >= 0.80, result["scores"]
    assert pruned["red"] >= 0.30, pruned
    assert pruned["cyan"] <= 3.0e-3, pruned
    warm = {"red", "orange", "pink", "yellow", "magenta"}
    assert max(v for k, v in pruned.items() if k not in warm) <= 5.0e-3, pruned
    ablated = result["named_color_mse"]["ablate:red"]
    assert all(abs(pruned[k] - ablated[k]) <= 1e-6 for k in pruned), (pruned, ablated)


def test_relearning_study_pipeline_with_given_models(tiny_recipe):
    """The study's plumbing (delete, heal, post-hoc projection, attacks, table) on untrained stand-in models."""
    from structured_hf.evaluation.relearning import relearning_study, relearning_table

    recipe = parse_recipe(tiny_recipe())
    torch.manual_seed(1)
    config = ColorAutoencoderConfig(bottleneck_dim=4, hidden_dim=8, concepts=recipe.model["concepts"])
    models = {name: ColorAutoencoderModel(config).eval() for name in ("anchored", "unanchored", "filtered")}
    study = relearning_study(recipe, "red", attack=AttackConfig(steps=4, lr=1.0e-2), heal_steps=2, models=models)
    assert list(study["rows"]) == [
        "anchored+pruned",
        "anchored+pruned+healed(encoder)",
        "anchored+pruned+healed(all)",
        "unanchored+projected",
        "filtered",
        "anchored (not deleted)",
    ]
    for row in study["rows"].values():
        assert len(row["curves"]["prototype"]) == 5
        assert set(row["curves"]) == {"prototype", "concept_heldout", "retain", "named_other"}
    assert study["train_runtime_s"] == {}  # nothing was trained
    assert abs(np.linalg.norm(study["post_hoc_direction"]) - 1.0) < 1e-9
    table = relearning_table(study)
    assert table.count("\n| ") == 7 and "anchored+pruned+healed(all)" in table
    with pytest.raises(StructuredConfigError, match="not a direction concept"):
        relearning_study(recipe, "hue", models=models)
