"""Sweeps: expansion (variants x regularizer subsets x seeds), validation errors that name the field, the summary
table, the sweep script end to end, and one real claim of the M1 recipes (repulsion opens the hue wheel)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import load_script
from structured_hf import StructuredConfigError
from structured_hf.training import build_trainer, load_recipe, parse_recipe
from structured_hf.training.sweep import (
    PROPERTY_CHECKS,
    expand_sweep,
    lost_properties,
    regularizer_subsets,
    run_sweep,
    set_path,
    write_summary,
)

REPO = Path(__file__).resolve().parents[1]


def _sweep_recipe(tiny_recipe, sweep: dict, **kw) -> dict:
    raw = tiny_recipe(**kw)
    raw["sweep"] = sweep
    return raw


# ---- expansion ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_subsets_are_every_nonempty_subset(n):
    names = [f"r{i}" for i in range(n)]
    subsets = regularizer_subsets(names)
    assert len(subsets) == 2**n - 1
    assert len({frozenset(s) for s in subsets}) == len(subsets)
    assert all(subsets) and tuple(names) in subsets


def test_subsets_times_seeds(tiny_recipe):
    raw = _sweep_recipe(tiny_recipe, {"regularizer_subsets": True, "seeds": [3, 4]})
    raw["reactive"] = [{"metric": "loss", "op": "<", "threshold": 1.0, "parameter": "separate", "target": 0.0}]
    runs = expand_sweep(parse_recipe(raw))
    assert len(runs) == (2**3 - 1) * 2
    assert len({r.recipe.output_dir for r in runs}) == len(runs)
    assert {r.seed for r in runs} == {3, 4} and all(r.recipe.seed == r.seed for r in runs)
    kept = {frozenset(r.regularizers) for r in runs}
    assert len(kept) == 7
    for run in runs:
        assert [g["name"] for g in run.recipe.regularizers] == list(run.regularizers)
        assert run.recipe.sweep is None
        # a reactive rule that moves a dropped regularizer is dropped with it
        assert bool(run.recipe.reactive) == ("separate" in run.regularizers)
    only_plane = next(r for r in runs if r.regularizers == ("plane",) and r.seed == 4)
    assert only_plane.name == "plane-seed4"
    assert only_plane.recipe.output_dir == str(Path(raw["output_dir"]) / "plane-seed4")


def test_subsets_of_named_regularizers_keep_the_others(tiny_recipe):
    raw = _sweep_recipe(tiny_recipe, {"regularizer_subsets": ["anchor-red", "separate"]})
    runs = expand_sweep(parse_recipe(raw))
    assert len(runs) == 3
    assert all("plane" in r.regularizers for r in runs)


def test_variants_times_seeds_and_dotted_keys(tiny_recipe):
    raw = _sweep_recipe(
        tiny_recipe,
        {
            "seeds": [0, 1, 2],
            "variants": [
                {"name": "base"},
                {
                    "name": "stiff",
                    "set": {
                        "regularizers.plane.weight": 0.5,
                        "training.max_steps": 7,
                        "regularizers.2.params": {"power": 10.0},
                    },
                },
            ],
        },
    )
    runs = expand_sweep(parse_recipe(raw))
    assert len(runs) == 2 * 3
    assert [r.name for r in runs[:3]] == ["base-seed0", "base-seed1", "base-seed2"]
    stiff = [r for r in runs if r.variant == "stiff"]
    assert all(r.recipe.training["max_steps"] == 7 for r in stiff)
    regs = {g["name"]: g for g in stiff[0].recipe.regularizers}
    assert regs["plane"]["weight"] == 0.5 and regs["separate"]["params"] == {"power": 10.0}
    assert regs["anchor-red"]["weight"] == raw["regularizers"][0]["weight"]  # untouched
    base = {g["name"]: g for g in runs[0].recipe.regularizers}
    assert base["plane"]["weight"] == raw["regularizers"][1]["weight"]
    # each run builds a trainer (the expanded recipes are complete)
    assert build_trainer(stiff[0].recipe).args.max_steps == 7


def test_recipe_without_sweep_is_one_run(tiny_recipe):
    recipe = parse_recipe(tiny_recipe())
    runs = expand_sweep(recipe)
    assert len(runs) == 1 and runs[0].recipe == recipe
    assert "sweep" not in recipe.to_dict()


def test_sweep_recipe_round_trips_through_yaml(tiny_recipe):
    recipe = parse_recipe(_sweep_recipe(tiny_recipe, {"seeds": [0, 1], "regularizer_subsets": True}))
    assert recipe.sweep == {"seeds": [0, 1], "regularizer_subsets": True}
    assert parse_recipe(yaml.safe_load(recipe.to_yaml())) == recipe


def test_set_path_errors_name_the_place():
    tree = {"regularizers": [{"name": "a", "weight": 1.0}], "training": {"max_steps": 3}}
    set_path(tree, "regularizers.a.weight", 2.0, "f")
    set_path(tree, "training.logging_steps", 5, "f")
    assert tree == {"regularizers": [{"name": "a", "weight": 2.0}], "training": {"max_steps": 3, "logging_steps": 5}}
    with pytest.raises(StructuredConfigError, match=r"^f: 'b' is neither an index nor the name.*\['a'\]"):
        set_path(tree, "regularizers.b.weight", 1.0, "f")
    with pytest.raises(StructuredConfigError, match=r"^f: cannot set 'x' inside training\.max_steps"):
        set_path(tree, "training.max_steps.x", 1, "f")


# ---- validation ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sweep, pattern",
    [
        ([1, 2], r"^sweep: expected a mapping"),
        ({"seed": [1]}, r"^sweep: unknown keys \['seed'\]"),
        ({"seeds": "0-4"}, r"^sweep\.seeds: expected a non-empty list of integers"),
        ({"seeds": [1, 1]}, r"^sweep\.seeds: seeds must be distinct"),
        ({"seeds": [1.5]}, r"^sweep\.seeds: expected a non-empty list of integers"),
        ({"regularizer_subsets": ["plane", "nope"]}, r"^sweep\.regularizer_subsets\[1\]: unknown regularizer 'nope'"),
        ({"regularizer_subsets": "yes"}, r"^sweep\.regularizer_subsets: expected true/false"),
        ({"variants": {"name": "a"}}, r"^sweep\.variants: expected a list"),
        ({"variants": [{"name": "a b"}]}, r"^sweep\.variants\[0\]\.name: expected a name"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, r"^sweep\.variants\[1\]\.name: duplicate variant name 'a'"),
        ({"variants": [{"name": "a", "sets": {}}]}, r"^sweep\.variants\[0\]: unknown keys \['sets'\]"),
        (
            {"variants": [{"name": "a", "set": {"regularizers.nope.weight": 1.0}}]},
            r"^sweep\.variants\[0\]\.set\.regularizers\.nope\.weight: 'nope' is neither",
        ),
        (
            {"variants": [{"name": "a", "set": {"training.max_stepz": 3}}]},
            r"^sweep\.variants\[0\] \('a'\): training\.max_stepz: unknown TrainingArguments field",
        ),
        (
            {"variants": [{"name": "a", "set": {"regularizers.plane.weight": "1e-3"}}]},
            r"^sweep\.variants\[0\] \('a'\): regularizers\[1\]\.weight: expected a number, got '1e-3'",
        ),
        ({"variants": [{"name": "a", "set": {"sweep.seeds": [1]}}]}, r"^sweep\.variants\[0\]\.set\.sweep\.seeds: "),
        ({"figures": "yes"}, r"^sweep\.figures: expected true or false"),
    ],
)
def test_sweep_errors_name_the_field(tiny_recipe, sweep, pattern):
    with pytest.raises(StructuredConfigError, match=pattern):
        parse_recipe(_sweep_recipe(tiny_recipe, sweep))


def test_subsets_need_regularizers(tiny_recipe):
    raw = _sweep_recipe(tiny_recipe, {"regularizer_subsets": True})
    raw["regularizers"] = []
    with pytest.raises(StructuredConfigError, match=r"^sweep\.regularizer_subsets: the recipe has no regularizers"):
        parse_recipe(raw)


def test_recipe_errors_come_before_sweep_errors(tiny_recipe):
    raw = _sweep_recipe(tiny_recipe, {"seeds": "x"})
    raw["training"]["max_stepz"] = 3
    with pytest.raises(StructuredConfigError, match=r"^training\.max_stepz"):
        parse_recipe(raw)


# ---- summary ------------------------------------------------------------------------------------------------------
def _metrics(mse: float, order: bool, leak: float, norm_dev: float, red: float | None) -> dict:
    concepts = {"hue": {"leak_max": leak}}
    if red is not None:
        concepts["red"] = {"cosine": red}
    return {
        "named_color_mse_max": mse,
        "hue_mse_max": mse,
        "concepts": concepts,
        "train_runtime_s": 0.1,
        "structure": {
            "hue_order": {"ok": order, "min_gap_deg": 20.0 if order else 1.0},
            "hue_plane_leak_max": leak,
            "unit_norm_deviation_max": norm_dev,
            "data": {
                "unit_norm_deviation_mean": norm_dev,
                "unit_norm_deviation_max": norm_dev,
                "norm_mean": 1.0 - norm_dev,
                "off_plane_spread": {"r": 0.9},
            },
        },
        "stability": {
            "loss_spikes": {"count": 1, "max_height": 2.0},
            "reconstruction_spikes": {"count": 1, "heights": [2.0]},
            "reconstruction_excursions": {"count": 1, "max_ratio": 3.0, "peaks": [[10, 3.0]]},
            "latent_jitter": {"mean": 0.01},
        },
    }


def test_run_sweep_writes_one_table(tiny_recipe, tmp_path):
    runs = expand_sweep(parse_recipe(_sweep_recipe(tiny_recipe, {"regularizer_subsets": ["anchor-red", "plane"]})))
    canned = {
        "anchor-red+plane": _metrics(1.0e-3, True, 0.01, 0.02, 0.99),
        "anchor-red": _metrics(1.0e-3, True, 0.40, 0.02, 0.99),
        "plane": _metrics(5.0e-3, False, 0.01, 0.80, 0.20),
    }
    seen, lines = [], []

    def runner(recipe, figures, animation):
        name = Path(recipe.output_dir).name
        seen.append((name, figures, animation))
        return canned[name]

    rows = run_sweep(runs, runner=runner, log=lines.append)
    assert [name for name, *_ in seen] == ["anchor-red+plane", "anchor-red", "plane"]
    assert all(not f and not a for _, f, a in seen)
    assert sum(line.startswith("[") and "s, max named MSE" in line for line in lines) == 3  # one line per run
    assert [r["lost"] for r in rows] == [[], ["plane"], ["wheel", "norm", "anchor", "recon"]]
    json_path, md_path = write_summary(rows, tmp_path / "sweep")
    data = json.loads(json_path.read_text())
    assert [r["run"] for r in data["runs"]] == ["anchor-red+plane", "anchor-red", "plane"]
    assert data["runs"][2]["anchor_cosines"] == {"red": 0.2} and data["property_checks"] == PROPERTY_CHECKS
    table = [line for line in md_path.read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3  # header + one row per run
    assert "| plane | 0 |" in table[3] and "wheel, norm, anchor, recon" in table[3]
    assert all(math.isfinite(r["wall_s"]) for r in rows)


def test_lost_properties_skip_what_does_not_apply():
    assert lost_properties({"hue_order_ok": True, "hue_min_gap_deg": 20.0}) == []
    assert lost_properties({"hue_order_ok": True, "hue_min_gap_deg": 1.0}) == ["wheel"]  # in order, but bunched
    assert lost_properties({"anchor_cosines": {}, "named_color_mse_max": 3.0e-3}) == ["recon"]


# ---- the script, end to end (real, tiny trainings) -----------------------------------------------------------------
def test_sweep_script_runs_seeds_and_writes_the_summary(tiny_recipe, tmp_path, capsys):
    raw = tiny_recipe(max_steps=3)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "sweep"
    assert load_script("sweep").main([str(path), "--seeds", "0,1", "--output_dir", str(out)]) == 0
    rows = json.loads((out / "summary.json").read_text())["runs"]
    assert [r["run"] for r in rows] == ["seed0", "seed1"]
    assert all((out / r["run"] / "metrics.json").is_file() for r in rows)
    assert (out / "summary.md").is_file() and (out / "loss_comparison.png").is_file()
    assert "[2/2] seed1" in capsys.readouterr().out


def test_sweep_script_errors(tiny_recipe, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe()))
    script = load_script("sweep")
    assert script.main([str(path), str(path)]) == 2
    assert "--output_dir: is required with several recipes" in capsys.readouterr().err
    assert script.main([str(path), "--seeds", "3-1"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_train_script_trains_the_base_of_a_sweep_file(tiny_recipe, tmp_path, capsys):
    raw = _sweep_recipe(tiny_recipe, {"regularizer_subsets": True}, max_steps=2)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "base"
    assert load_script("train").main([str(path), "--output_dir", str(out), "--no_figures"]) == 0
    assert "is a sweep file; training its base recipe only" in capsys.readouterr().err
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert "sweep" not in saved and len(saved["regularizers"]) == 3


def test_shipped_sweep_file_expands_to_the_15_subsets():
    recipe = load_recipe(REPO / "configs/color_autoencoder/ex1.8-regularizer-subsets.yaml")
    runs = expand_sweep(recipe)
    assert len(runs) == 15
    assert {frozenset(r.regularizers) for r in runs} == {
        frozenset(s) for s in regularizer_subsets(["anchor", "unit", "planar", "separate"])
    }


# ---- a claim of the M1 recipes, checked by a short real run --------------------------------------------------------
def test_repulsion_opens_the_hue_wheel_in_ex13(tmp_path):
    """ex1.3's tuning claim: with unitarity + planarity alone the pure hues fold into an arc; the short burst of
    angular repulsion makes them wind once round the origin in cyclic order (300 steps: the two hue-only phases)."""
    from structured_hf.evaluation.structure import color_structure

    base = load_recipe(
        REPO / "configs/color_autoencoder/ex1.3-curriculum-3d.yaml",
        {"training.max_steps": 300, "training.logging_steps": 100, "output_dir": str(tmp_path)},
    )
    orders = {}
    for label, keep in (("with", None), ("without", ["unit", "planar"])):
        recipe = copy.deepcopy(base)
        if keep:
            recipe.regularizers = [r for r in recipe.regularizers if r["name"] in keep]
        trainer = build_trainer(recipe)
        trainer.train()
        orders[label] = color_structure(trainer.model, "bottleneck")["hue_order"]
    assert orders["with"]["ok"] and orders["with"]["min_gap_deg"] > 15.0, orders
    assert not orders["without"]["ok"], orders
