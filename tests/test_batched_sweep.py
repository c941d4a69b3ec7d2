"""Batched seed training (structured_hf/training/batched.py): a seed of a batch trains like its single Trainer run,
seeds stay independent, and what cannot be batched fails with an error that names the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers.trainer_callback import PrinterCallback

from conftest import load_script
from structured_hf import StructuredConfigError
from structured_hf.training import build_trainer, load_recipe
from structured_hf.training.batched import check_batchable, train_batched

REPO = Path(__file__).resolve().parents[1]
DELETION = REPO / "configs/color_autoencoder/ex2.11.2-delete-red-deletion-target.yaml"
SUPPRESSION = REPO / "configs/color_autoencoder/ex2.4.1-suppress-red.yaml"
# Batched matrix products may sum in another order than the single ones: after 40 steps the weights agree to a few
# float32 ulps (measured: 1.2e-7 at 30 steps); training amplifies this over 1500 steps (docs/m2-control.md compares
# the 20-seed score distributions instead).
TOLERANCE = 1e-5


def _single(path: Path, seed: int, steps: int, tmp_path: Path) -> torch.nn.Module:
    recipe = load_recipe(path, {"seed": seed, "training.max_steps": steps, "training.disable_tqdm": True,
                                "output_dir": str(tmp_path / f"single-{seed}")})
    trainer = build_trainer(recipe)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer.model


def _max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    return max(float((pa[k].detach() - pb[k].detach()).abs().max()) for k in pa)


@pytest.mark.parametrize("path", [DELETION, SUPPRESSION], ids=["deletion-10-terms", "suppression-repulsion"])
def test_each_batched_seed_matches_its_single_run(path, tmp_path):
    """Seeds 3 and 7 in one batch: each equals its own single run (init, data order, labels, schedule, clipping),
    and the two differ from each other (the seeds did not share anything)."""
    steps = 40
    recipes = [load_recipe(path, {"seed": s, "training.max_steps": steps}) for s in (3, 7)]
    batched, info = train_batched(recipes)
    assert info["seeds"] == [3, 7] and info["steps"] == steps
    for seed, model in zip((3, 7), batched):
        single = _single(path, seed, steps, tmp_path)
        assert _max_difference(single, model) < TOLERANCE, seed
    assert _max_difference(batched[0], batched[1]) > 1e-2
    assert not batched[0].training  # returned in eval mode, like train_recipe's models


def test_per_seed_weights_follow_each_recipe(tmp_path):
    """A batch may give each seed its own regularizer weights: a seed whose anchor weight is 0 trains like its
    single run without the anchor, next to a seed that has it."""
    steps = 30
    plain = load_recipe(SUPPRESSION, {"seed": 1, "training.max_steps": steps})
    off = load_recipe(SUPPRESSION, {"seed": 1, "training.max_steps": steps, "regularizers.anchor-red.weight": 0.0,
                                    "output_dir": str(tmp_path / "off")})
    (with_anchor, without), _ = train_batched([plain, off])
    trainer = build_trainer(off)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    assert _max_difference(trainer.model, without) < TOLERANCE
    assert _max_difference(with_anchor, without) > 1e-6


def test_no_seeds_is_an_error():
    with pytest.raises(StructuredConfigError, match="seeds"):
        train_batched([])
    with pytest.raises(StructuredConfigError, match="seeds"):
        check_batchable([])


def test_a_family_without_batched_training_is_refused():
    recipe = load_recipe(REPO / "configs/color_transformer/default.yaml", {"training.max_steps": 5})
    with pytest.raises(StructuredConfigError, match=r"model\.type.*color_transformer.*--sequential"):
        check_batchable([recipe])


@pytest.mark.parametrize("override, field", [
    ({"data.curriculum": {"vibrancy_min": {"keys": [[0, 0.5], [4, 0.0]]}}}, "data.curriculum"),
    ({"training.gradient_accumulation_steps": 2}, "training.gradient_accumulation_steps"),
])
def test_unsupported_recipe_parts_name_the_field(override, field):
    recipe = load_recipe(SUPPRESSION, {"training.max_steps": 5, **override})
    with pytest.raises(StructuredConfigError, match=field.replace(".", r"\.")):
        check_batchable([recipe])


def test_runs_of_one_batch_must_share_model_and_lr():
    a = load_recipe(SUPPRESSION, {"training.max_steps": 5})
    b = load_recipe(SUPPRESSION, {"training.max_steps": 5, "model.hidden_dim": 8})
    c = load_recipe(SUPPRESSION, {"training.max_steps": 5, "schedules.learning_rate": 1.0e-1})
    with pytest.raises(StructuredConfigError, match=r"model \(run 1\)"):
        check_batchable([a, b])
    with pytest.raises(StructuredConfigError, match=r"schedules\.learning_rate \(run 1\)"):
        check_batchable([a, c])


def test_sweep_seeds_script_batched_by_default_and_errors(tmp_path, capsys):
    """The script trains the seeds as one batch (the log says so) and writes per-seed scores; --batched with a
    recipe that cannot batch exits 2 with the reason."""
    script = load_script("sweep_seeds")
    out = tmp_path / "sweep"
    code = script.main([str(SUPPRESSION), "--seeds", "0-1", "--set", "training.max_steps=20", "--intervention",
                        "suppress:red", "--grid_size", "4", "--output_dir", str(out)])
    assert code == 0
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    assert runs[0]["scores"]["suppress:red"] != runs[1]["scores"]["suppress:red"]
    code = script.main([str(SUPPRESSION), "--seeds", "0-1", "--batched", "--set", "training.max_steps=20",
                        "--set", "training.gradient_accumulation_steps=2", "--output_dir", str(tmp_path / "bad")])
    assert code == 2
    assert "training.gradient_accumulation_steps" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
