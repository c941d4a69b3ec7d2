"""Every shipped recipe builds; broken recipes fail with an error that names the offending field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from structured_hf import ColorAutoencoderConfig, ColorAutoencoderModel, ConceptMap, StructuredConfigError, site_dims
from structured_hf.data import ColumnarDataset
from structured_hf.training import (
    MODEL_TYPES,
    AnchoredTrainer,
    AnchoredTrainingArguments,
    build_datasets,
    build_trainer,
    load_recipe,
    model_config,
    parse_recipe,
)
from structured_hf.data.lm_data import LMDataSpec
from structured_hf.training.arguments import RegularizerSpec
from structured_hf.training.recipe import model_type
from structured_hf.training.routing import RouteSpec
from structured_hf.training.transitions import ReactiveRule
from structured_hf.validation import check_keys, check_number

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# labels*.yaml are weak-labelling configs for scripts/label_text.py, not recipes (tests/test_text_data.py loads them).
RECIPES = sorted(
    p
    for p in CONFIGS.glob("**/*.yaml")
    if "accelerate" not in p.relative_to(CONFIGS).parts and not p.name.startswith("labels")
)


def test_configs_are_found():
    assert RECIPES, f"no recipes under {CONFIGS}"
    assert any(p.name == "default.yaml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(CONFIGS)) for p in RECIPES])
def test_shipped_recipe_builds(path, tmp_path):
    recipe = load_recipe(path, overrides={"output_dir": str(tmp_path)})
    assert recipe.output_dir == str(tmp_path)
    config = model_config(recipe)
    model = MODEL_TYPES[model_type(recipe)][1](config)
    concepts = ConceptMap.parse(config.concepts).validate(site_dims(model))
    train, eval_ds = build_datasets(recipe)
    assert len(train) > 0
    labels = sorted(recipe.data.get("labels") or {})
    if model_type(recipe) in ("structured_gpt", "pretrained"):  # labels come from the text labels config's concepts
        labels = sorted(LMDataSpec.from_dict(recipe.data).concepts())
    assert sorted(ColumnarDataset(train).label_names) == labels
    for reg in recipe.regularizers:
        if reg.get("concept") is not None:
            assert reg["concept"] in concepts, reg
        if reg.get("label") is not None:
            assert reg["label"].removeprefix("not:") in labels, reg
    if eval_ds is not None:
        for name in recipe.data.get("eval_labels") or {}:
            # exact labels: 0/1 only, and the prototypes are in the evaluation set
            probs = set(eval_ds[f"prob_{name}"][:])
            assert probs == {0.0, 1.0}, name
    # the recipe's dump parses back to the same recipe
    assert parse_recipe(yaml.safe_load(recipe.to_yaml())) == recipe


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(CONFIGS)) for p in RECIPES])
def test_shipped_recipe_builds_a_trainer(path, tmp_path):
    recipe = load_recipe(path, overrides={"output_dir": str(tmp_path), "training.max_steps": 2})
    trainer = build_trainer(recipe)
    assert isinstance(trainer, AnchoredTrainer)
    assert trainer.args.max_steps == 2
    assert [r.spec.name for r in trainer.bound_regularizers] == [
        r.get("name") or r["loss"] + (f":{r['concept']}" if r.get("concept") else "") for r in recipe.regularizers
    ]


# ---- error cases --------------------------------------------------------------------------------------------------
MINIMAL = """\
seed: 0
model:
  type: color_autoencoder
  bottleneck_dim: 4
  hidden_dim: 8
  concepts:
    - {name: red, site: bottleneck, direction: [1.0, 0.0, 0.0, 0.0]}
    - {name: hue, site: bottleneck, axes: [0, 1]}
data:
  train: {grid: rgb, size: 3}
  eval: {grid: named}
  labels:
    red: {feature: redness, scale: 1.0e-1, power: 8.0}
    vibrant: {scale: 1.0e-1, power: 10.0}
  eval_labels:
    red: [red]
regularizers:
  - {name: anchor-red, loss: angular_anchor, concept: red, label: red, weight: 1.0e-1}
  - {name: hue-plane, loss: subspace, concept: hue, label: vibrant, weight: 1.0e-1}
  - {name: separate, loss: angular_repulsion, site: bottleneck, params: {power: 100.0}, weight: 1.0e-2}
schedules:
  learning_rate: {interpolation: log, keys: [[0, 1.0e-4], [2, 1.0e-2]]}
training:
  max_steps: 2
  per_device_train_batch_size: 8
  learning_rate: 1.0e-2
  report_to: none
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def _replace(old: str, new: str) -> str:
    assert old in MINIMAL, old
    return MINIMAL.replace(old, new, 1)


def _load(tmp_path: Path, text: str):
    return load_recipe(_write(tmp_path, text), overrides={"output_dir": str(tmp_path / "out")})


def test_minimal_recipe_builds(tmp_path):
    recipe = _load(tmp_path, MINIMAL)
    assert isinstance(model_config(recipe), ColorAutoencoderConfig)
    trainer = build_trainer(recipe)
    assert {r.spec.name for r in trainer.bound_regularizers} == {"anchor-red", "hue-plane", "separate"}
    _, eval_ds = build_datasets(recipe)
    assert sum(eval_ds["prob_red"][:]) == 1.0


def test_overrides(tmp_path):
    recipe = load_recipe(_write(tmp_path, MINIMAL), overrides={"training.max_steps": 7, "model.hidden_dim": 4})
    assert recipe.training["max_steps"] == 7
    assert model_config(recipe).hidden_dim == 4


def test_missing_file(tmp_path):
    with pytest.raises(StructuredConfigError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("model: [unclosed\n", r"recipe\.yaml: malformed YAML"),
        ("- model\n- data\n", r"recipe\.yaml: expected a YAML mapping at the top level, got list"),
        ("just a string\n", r"expected a YAML mapping at the top level, got str"),
        (MINIMAL + "modle: {}\n", r"unknown top-level keys \['modle'\]"),
        (_replace("  hidden_dim: 8\n", "  hiden_dim: 8\n"), r"model: unknown keys \['hiden_dim'\]"),
        (
            _replace("type: color_autoencoder", "type: color_transformr"),
            r"model\.type: unknown model type 'color_transformr'",
        ),
        (
            _replace("  hidden_dim: 8\n", "  hidden_dim: 8\n  activation: swish\n"),
            r"model\.activation: expected one of",
        ),
        (
            _replace("loss: angular_anchor", "loss: angular_anchr"),
            r"regularizers\[0\]\.loss: unknown loss 'angular_anchr'",
        ),
        (
            _replace(
                "{name: separate, loss: angular_repulsion, site: bottleneck,",
                "{name: separate, loss: angular_repulsion,",
            ),
            r"regularizers\[2\]\.site: .* needs a site",
        ),
        (
            _replace("concept: hue, label: vibrant,", "concept: hue, lable: vibrant,"),
            r"regularizers\[1\]: unknown keys \['lable'\]",
        ),
        (
            _replace("{name: red, site: bottleneck,", "{name: red, site: bottlenek,"),
            r"concepts\[0\] \('red'\)\.site: unknown site 'bottlenek'",
        ),
        (
            _replace("direction: [1.0, 0.0, 0.0, 0.0]", "direction: [1.0, 0.0, 0.0]"),
            r"concepts\[0\] \('red'\)\.direction: has length 3 but site 'bottleneck' has width 4",
        ),
        (
            _replace("direction: [1.0, 0.0, 0.0, 0.0]", "direction: [1.0, 1e-4, 0.0, 0.0]"),
            r"concepts\[0\]\.direction\[1\]: expected a number, got '1e-4'",
        ),
        (
            _replace("  learning_rate: 1.0e-2\n", "  learning_rate: 1e-4\n"),
            r"training\.learning_rate: expected a number, got '1e-4' \(str\).*write 1\.0e-4",
        ),
        (
            _replace("label: red, weight: 1.0e-1}", "label: red, weight: 1e-4}"),
            r"regularizers\[0\]\.weight: expected a number, got '1e-4'.*write 1\.0e-4",
        ),
        (
            _replace("keys: [[0, 1.0e-4], [2, 1.0e-2]]", "keys: [[0, 1e-4], [2, 1.0e-2]]"),
            r"schedules\.learning_rate\.keys\[0\]: expected a number, got '1e-4'.*1\.0e-4",
        ),
        (
            _replace("red: {feature: redness, scale: 1.0e-1", "red: {feature: redness, scale: 1e-1"),
            r"data\.labels\.red\.scale: expected a number, got '1e-1'",
        ),
        (
            _replace("red: {feature: redness,", "red: {feature: rednes,"),
            r"data\.labels\.red\.feature: unknown feature 'rednes'",
        ),
        (_replace("schedules:\n  learning_rate:", "schedules:\n  lr:"), r"schedules\.lr: unknown parameter"),
        (_replace("  max_steps: 2\n", "  max_step: 2\n"), r"training\.max_step: unknown TrainingArguments field"),
        (_replace("  max_steps: 2\n", "  max_steps: 2\n  seed: 3\n"), r"training\.seed: set 'seed' at the top level"),
        (_replace("train: {grid: rgb, size: 3}", "trian: {grid: rgb, size: 3}"), r"data: unknown keys \['trian'\]"),
        (_replace("seed: 0", "seed: zero"), r"seed: expected an integer"),
        # Data grids are checked when the recipe is loaded (they used to fail only when the trainer was built).
        (
            _replace("train: {grid: rgb, size: 3}", "train: {grid: rgb, sise: 3}"),
            r"data\.train: unknown keys \['sise'\]",
        ),
        (_replace("eval: {grid: named}", "eval: {grid: hsl}"), r"data\.eval\.grid: expected one of"),
    ],
)
def test_recipe_errors_at_load(tmp_path, text, pattern):
    with pytest.raises(StructuredConfigError, match=pattern):
        _load(tmp_path, text)


@pytest.mark.parametrize(
    "text, pattern",
    [
        (
            _replace("concept: red, label: red", "concept: blue, label: red"),
            r"regularizers\[0\] \('anchor-red'\)\.concept: unknown concept 'blue'.*\['red', 'hue'\]",
        ),
        (
            _replace("concept: red, label: red", "concept: red, label: redd"),
            r"regularizers\[0\] \('anchor-red'\)\.label: unknown label 'redd'",
        ),
        (
            _replace("loss: angular_repulsion, site: bottleneck", "loss: angular_repulsion, site: bottlenek"),
            r"regularizers\[2\] \('separate'\)\.site: unknown site 'bottlenek'.*\['bottleneck', 'encoder'\]",
        ),
        (
            _replace("loss: subspace, concept: hue", "loss: subspace, concept: red"),
            r"regularizers\[1\] \('hue-plane'\)\.concept: loss 'subspace' needs a concept with axes",
        ),
        (
            _replace("eval_labels:\n    red: [red]", "eval_labels:\n    reed: [red]"),
            r"data\.eval_labels\.reed: unknown label",
        ),
        (
            _replace("eval_labels:\n    red: [red]", "eval_labels:\n    red: [blurple]"),
            r"data\.eval_labels\.red\[0\]: unknown color 'blurple'",
        ),
    ],
)
def test_recipe_errors_at_build_trainer(tmp_path, text, pattern):
    recipe = _load(tmp_path, text)  # parses: these need the model or the data to be checked
    with pytest.raises(StructuredConfigError, match=pattern):
        build_trainer(recipe)


_BASE = {"model": {"bottleneck_dim": 4}, "data": {"train": {"grid": "rgb", "size": 2}}}


@pytest.mark.parametrize(
    "section, value",
    [
        ("training", [1]),
        ("training", 5),
        ("training", "max_steps: 3"),
        ("schedules", [1, 2]),
        ("regularizers", {"loss": "unitarity", "site": "bottleneck"}),
        ("regularizers", "unitarity"),
    ],
)
def test_sections_of_the_wrong_type_name_the_section(section, value):
    with pytest.raises(StructuredConfigError, match=rf"^{section}: "):
        parse_recipe({**_BASE, section: value})


def test_null_output_dir_is_not_the_string_none(tmp_path):
    path = _write(tmp_path, MINIMAL + "output_dir: null\n")
    try:
        recipe = load_recipe(path)
    except StructuredConfigError as e:  # rejecting it is an acceptable fix
        assert "output_dir" in str(e)
        return
    assert recipe.output_dir != "None"


# ---- parse once, typed ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipes_specs_round_trip_through_their_yaml_form(path):
    """The typed specs a recipe holds write back (``to_dict``) to YAML that parses to equal specs: training arguments
    log this form, so what a log shows is what ran."""
    specs = load_recipe(path).specs
    for i, spec in enumerate(specs.regularizers):
        assert RegularizerSpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict())), f"r[{i}]") == spec
    for i, spec in enumerate(specs.routes):
        assert RouteSpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict())), f"r[{i}]") == spec
    for i, rule in enumerate(specs.reactive):
        assert ReactiveRule.from_dict(rule.to_dict(), f"reactive[{i}]") == rule


def test_a_recipe_is_parsed_once_and_again_only_when_its_sections_change(tmp_path):
    recipe = load_recipe(CONFIGS / "color_autoencoder/default.yaml", {"output_dir": str(tmp_path)})
    assert recipe.specs is recipe.specs  # kept, not re-parsed per access
    names = [s.name for s in recipe.specs.regularizers]
    recipe.regularizers.append({"name": "extra", "loss": "unitarity", "site": "bottleneck"})
    assert [s.name for s in recipe.specs.regularizers] == names + ["extra"]  # an in-place change is seen
    fewer = dataclasses.replace(recipe, regularizers=recipe.regularizers[:1])
    assert [s.name for s in fewer.specs.regularizers] == names[:1]
    with pytest.raises(StructuredConfigError, match=r"regularizers\[0\]\.loss: unknown loss 'nope'"):
        dataclasses.replace(recipe, regularizers=[{"loss": "nope"}])
    args = AnchoredTrainingArguments(
        output_dir=str(tmp_path),
        regularizers=list(recipe.specs.regularizers),
        schedules=dict(recipe.specs.schedules),
        reactive=list(recipe.specs.reactive),
    )
    assert all(a is b for a, b in zip(args.regularizers, recipe.specs.regularizers))  # passed through, not re-parsed
    logged = json.loads(args.to_json_string())
    assert logged["regularizers"] == [s.to_dict() for s in recipe.specs.regularizers]


def test_concept_map_of_reads_any_config_and_never_goes_stale():
    config = ColorAutoencoderConfig(
        bottleneck_dim=4, concepts=[{"name": "red", "site": "bottleneck", "direction": [1.0, 0.0, 0.0, 0.0]}]
    )
    model = ColorAutoencoderModel(config)
    assert ConceptMap.of(model).names == model.concept_map.names == ["red"]
    model.config.concepts = []  # as surgery does when it drops a concept
    assert model.concept_map.names == [] and ConceptMap.of(model.config).names == []

    class PlainConfig:  # a pretrained model's config: no concepts attribute until sites are attached
        pass

    assert ConceptMap.of(PlainConfig()).names == []
    PlainConfig.concepts = [{"name": "x", "site": "layers.0.residual_post", "axes": [0]}]
    assert ConceptMap.of(PlainConfig()).names == ["x"]


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (True, {}, "expected a number, got True (bool)"),
        ("1e-3", {}, "write 1.0e-3"),
        (float("nan"), {}, "expected a finite number"),
        (0.0, {"low": 0.0, "low_open": True}, "expected a positive number, got 0.0 (allowed: > 0.0)"),
        (-1, {"low": 0}, "expected a non-negative number, got -1 (allowed: >= 0)"),
        (0.5, {"low": 1, "integer": True}, "expected a positive integer, got 0.5 (float)"),
        (0, {"low": 1, "integer": True}, "expected a positive integer, got 0 (allowed: >= 1)"),
        (2, {"high": 1}, "expected a number, got 2 (allowed: <= 1)"),
        (
            1.0,
            {"low": 0.0, "high": 1.0, "high_open": True},
            "expected a number in [0.0, 1.0), got 1.0 (allowed: >= 0.0 and < 1.0)",
        ),
        (1.5, {"integer": True}, "expected an integer, got 1.5"),
    ],
)
def test_check_number_names_the_field_and_what_was_expected(value, kwargs, message):
    with pytest.raises(StructuredConfigError, match=r"^a\.b: ") as e:
        check_number("a.b", value, **kwargs)
    assert message in str(e.value)


def test_check_keys_lists_unknown_and_allowed_keys():
    assert check_keys("x", {"a": 1}, {"a", "b"}) == {"a": 1}
    with pytest.raises(StructuredConfigError, match=r"^x: unknown keys \['c'\] for a kind; allowed: \['a', 'b'\]$"):
        check_keys("x", {"a": 1, "c": 2}, {"a", "b"}, context="for a kind")
    with pytest.raises(StructuredConfigError, match=r"^x: expected a mapping with a/b, got \[1\]$"):
        check_keys("x", [1], {"a", "b"}, "a/b")


def test_the_old_parsed_spec_names_of_training_arguments_still_work_with_a_warning(tmp_path):
    args = AnchoredTrainingArguments(
        output_dir=str(tmp_path),
        regularizers=[{"loss": "unitarity", "site": "bottleneck"}],
        schedules={"reconstruction": 0.5},
    )
    with pytest.warns(FutureWarning, match="regularizer_specs is deprecated"):
        assert args.regularizer_specs == args.regularizers
    with pytest.warns(FutureWarning, match="parameter_schedules is deprecated"):
        assert args.parameter_schedules["reconstruction"](0) == 0.5
