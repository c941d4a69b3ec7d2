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
from structured_hf.benchmarks import batched as benchmark
from structured_hf.losses.regularizers import angular_repulsion
from structured_hf.training import build_trainer, load_recipe
from structured_hf.training.batched import _angular_repulsion, _draw_labels, check_batchable, train_batched
from structured_hf.training.label_draws import draw_window_labels, label_generator

REPO = Path(__file__).resolve().parents[1]
DELETION = REPO / "configs/color_autoencoder/ex2.11.2-delete-red-deletion-target.yaml"
SUPPRESSION = REPO / "configs/color_autoencoder/ex2.4.1-suppress-red.yaml"
COMPLEMENT = REPO / "configs/color_autoencoder/suppress-concept-color-complement.yaml"
# Batched matrix products may sum in another order than the single ones: after 40 steps the weights agree to a few
# float32 ulps (measured: 1.2e-7 at 30 steps); training amplifies this over 1500 steps (docs/m2-control.md compares
# the 20-seed score distributions instead).
TOLERANCE = 1e-5


def _single(path: Path, seed: int, steps: int, tmp_path: Path, overrides: dict | None = None) -> torch.nn.Module:
    recipe = load_recipe(
        path,
        {
            **(overrides or {}),
            "seed": seed,
            "training.max_steps": steps,
            "training.disable_tqdm": True,
            "output_dir": str(tmp_path / f"single-{seed}"),
        },
    )
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


def test_suppression_target_batched_equals_its_single_run(tmp_path):
    """The suppressed readout (suppression_target, pulling suppress:orange's output toward azure) trains a batched
    seed as it trains the single run; orange plus the named colors labels the concept often enough that the term acts
    from the first steps (checked in the log)."""
    steps = 40
    overrides = {"concept_color": "orange", "data.train.include_named": True}
    (model,), info = train_batched([load_recipe(COMPLEMENT, {**overrides, "seed": 5, "training.max_steps": steps})])
    logged = [entry["term/suppressed-to-complement"] for entry in info["log_history"][0]]
    assert all(value > 0 for value in logged), logged
    assert _max_difference(_single(COMPLEMENT, 5, steps, tmp_path, overrides), model) < TOLERANCE


@pytest.mark.parametrize(
    "override, match",
    [
        ({"regularizers.suppressed-to-complement.params.target": "oragne"}, "unknown color 'oragne'"),
        ({"regularizers.suppressed-to-complement.params.target": "concept+x"}, "unknown color 'concept\\+x'"),
        ({"regularizers.suppressed-to-complement.concept": "hue"}, "needs a concept with direction"),
    ],
)
def test_suppression_target_errors_name_the_field(override, match):
    # Unknown colors fail when the recipe is loaded; an axes concept when the batched or the single trainer binds it.
    field = r"\('suppressed-to-complement'\)\.(params\.target\[0\]|concept): .*"
    with pytest.raises(StructuredConfigError, match=field + match):
        train_batched([load_recipe(COMPLEMENT, {"training.max_steps": 2, **override})])
    with pytest.raises(StructuredConfigError, match=field + match):
        build_trainer(load_recipe(COMPLEMENT, {"training.max_steps": 2, **override}))


def test_per_seed_weights_follow_each_recipe(tmp_path):
    """A batch may give each seed its own regularizer weights: a seed whose anchor weight is 0 trains like its
    single run without the anchor, next to a seed that has it."""
    steps = 30
    plain = load_recipe(SUPPRESSION, {"seed": 1, "training.max_steps": steps})
    off = load_recipe(
        SUPPRESSION,
        {
            "seed": 1,
            "training.max_steps": steps,
            "regularizers.anchor-red.weight": 0.0,
            "output_dir": str(tmp_path / "off"),
        },
    )
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


@pytest.mark.parametrize(
    "override, field",
    [
        ({"data.curriculum": {"vibrancy_min": {"keys": [[0, 0.5], [4, 0.0]]}}}, "data.curriculum"),
        ({"training.gradient_accumulation_steps": 2}, "training.gradient_accumulation_steps"),
    ],
)
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
    code = script.main(
        [
            str(SUPPRESSION),
            "--seeds",
            "0-1",
            "--set",
            "training.max_steps=20",
            "--intervention",
            "suppress:red",
            "--grid_size",
            "4",
            "--output_dir",
            str(out),
        ]
    )
    assert code == 0
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    assert runs[0]["scores"]["suppress:red"] != runs[1]["scores"]["suppress:red"]
    code = script.main(
        [
            str(SUPPRESSION),
            "--seeds",
            "0-1",
            "--batched",
            "--set",
            "training.max_steps=20",
            "--set",
            "training.gradient_accumulation_steps=2",
            "--output_dir",
            str(tmp_path / "bad"),
        ]
    )
    assert code == 2
    assert "training.gradient_accumulation_steps" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_sweep_hues_script_design_seeds_only(tmp_path):
    """--heldout_seeds none trains and reports the design seeds only (tuning a recipe without touching held-out
    seeds); the table has no held-out section."""
    script = load_script("sweep_hues")
    out = tmp_path / "hues"
    argv = [str(COMPLEMENT), "--mode", "suppress", "--hues", "orange", "--design_seeds", "0-1", "--grid_size", "4"]
    argv += ["--set", "training.max_steps=20", "--output_dir", str(out)]
    assert script.main([*argv, "--heldout_seeds", "none"]) == 0
    table = json.loads((out / "hues.json").read_text())
    assert table["seeds"] == {"design": [0, 1]}
    assert set(table["hues"]["orange"]) == {"design"}
    assert "heldout" not in (out / "hues.md").read_text()


def _latents_with_duplicates(n: int, b: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, B, D) latents of colors ``idx`` (N, B) drawn with replacement from 40 items: repeats are duplicates."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(40, d, generator=g, dtype=torch.float32)
    idx = torch.randint(0, 40, (n, b), generator=g)
    return table[idx].clone().requires_grad_(True), idx


@pytest.mark.parametrize("power", [100.0, 3.0, 2.5])
def test_batched_repulsion_equals_the_loss_per_seed(power):
    """The batched repulsion (for integer powers: no subnormals, c^(p-1) by squaring, fused backward) gives each seed
    the value and gradient of losses.angular_repulsion on its own batch, duplicates and self excluded, within float32
    rounding (measured 3e-6 relative at p = 100); the non-integer power goes through pow itself."""
    x, idx = _latents_with_duplicates(4, 32, 5, seed=0)
    weights = torch.rand(4, 32, generator=torch.Generator().manual_seed(1))
    batched = _angular_repulsion(x, idx, power=power)
    (g_batched,) = torch.autograd.grad((batched * weights).sum(), x)
    single = torch.stack([angular_repulsion(x[i], power=power) for i in range(4)])
    (g_single,) = torch.autograd.grad((single * weights).sum(), x)
    assert batched.shape == (4, 32)
    assert torch.allclose(batched, single, rtol=2e-5, atol=1e-30)
    assert torch.allclose(g_batched, g_single, rtol=2e-5, atol=1e-6 * float(g_single.abs().max()))
    assert float(single.detach().min()) > 0.0 and float(g_single.abs().max()) > 0.0  # not trivially zero


def test_batched_repulsion_drops_only_pairs_below_2_pow_minus_100():
    """Pairs of unit vectors, one pair per seed: at (1 + cos)/2 = 0.51 the term 0.51^100 (5.6e-30) is above the floor
    2^-100 (7.9e-31) and kept exactly as the loss computes it; at 0.40 the loss's term is 1.6e-40 (a subnormal float)
    and the batched one is 0: the only difference is the documented one, smaller than 2^-100."""
    c = torch.tensor([0.51, 0.40])
    angles = torch.stack([torch.zeros(2), torch.acos(2 * c - 1)], dim=1)  # (seeds, 2): cos(angle) = 2c - 1
    x = torch.stack([angles.cos(), angles.sin()], dim=-1)
    idx = torch.tensor([[0, 1], [0, 1]])
    batched = _angular_repulsion(x, idx, power=100.0)
    single = torch.stack([angular_repulsion(x[i], power=100.0) for i in range(2)])
    assert 2.0**-100 < float(single[0, 0]) < 1e-28
    assert torch.allclose(batched[0], single[0], rtol=2e-5, atol=0.0)
    assert 0.0 < float(single[1, 0]) < 2.0**-100 and float(batched[1].abs().max()) == 0.0


def test_batched_label_draws_equal_the_trainers_bernoulli_draws():
    """`_draw_labels` (one generator reused, `rand < p`) gives the labels the trainer's draw_window_labels gives each
    seed at each step (one `torch.bernoulli` per label on the (seed, step) generator), bit for bit."""
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(3, 50, generator=g) ** 3  # (labels, items), many small probabilities
    probs[0, :5] = 0.0
    probs[1, :5] = 1.0
    seeds, batch = [0, 7, 1000], 64
    idx = torch.randint(0, 50, (len(seeds), batch), generator=g)
    for step in (0, 1, 1500):
        drawn = _draw_labels(probs, idx, seeds, step, torch.Generator(), torch.empty(len(seeds), 3, batch))
        for i, seed in enumerate(seeds):
            labels = {name: probs[k, idx[i]].clone() for k, name in enumerate(["a", "b", "c"])}
            draw_window_labels([{"concept_labels": labels}], label_generator(seed, step), 1, 0, batch)
            expected = torch.stack([labels[name] for name in ["a", "b", "c"]])
            assert torch.equal(drawn[:, i], expected), (seed, step)
    assert 0 < float(drawn.mean()) < 1


def test_benchmark_writes_the_ratio_scaling_and_profile(tmp_path):
    """The benchmark (structured_hf/benchmarks/batched.py) on a few steps: the JSON holds the side-by-side runs and
    their median ratio, a scaling row per N from its own subprocess, and a profile whose phases sum to the loop."""
    out = tmp_path / "batched.json"
    args = benchmark.parse_args(
        [
            "--steps",
            "6",
            "--scaling_steps",
            "4",
            "--sizes",
            "2",
            "--repeats",
            "1",
            "--profile_steps",
            "4",
            "--output",
            str(out),
        ]
    )
    result = benchmark.run(args)
    assert (
        json.loads(out.read_text())["ratio_20_seed_sweep_over_single_run"]
        == result["ratio_20_seed_sweep_over_single_run"]
    )
    side = result["side_by_side"]
    assert len(side["single"]) == len(side["batched_20"]) == 1
    assert result["ratio_20_seed_sweep_over_single_run"] == pytest.approx(
        side["batched_20"][0]["sweep_s"] / side["single"][0]["sweep_s"]
    )
    assert result["target_met"] == (result["ratio_20_seed_sweep_over_single_run"] <= 3.0)
    row = result["scaling"][2]
    assert row["train_s"] > 0 and row["peak_rss_mib"] >= row["rss_before_training_mib"] > 0
    assert row["batch_tensor_bytes"] == 2 * benchmark.peak_memory_estimate(
        1, benchmark.seed_recipes(benchmark.DEFAULT_CONFIG, [0], 4)[0]
    )
    profile = result["profile"]["batched_20"]
    assert {
        "label draws",
        "model forward",
        "loss angular_repulsion",
        "backward (all autograd nodes)",
        "optimizer step",
    } <= set(profile["phases_us_per_step"])
    assert sum(profile["phases_us_per_step"].values()) == pytest.approx(profile["loop_us_per_step"])
    assert {"Trainer compute_loss (forward, losses)", "label draws"} <= set(
        result["profile"]["single"]["phases_us_per_step"]
    )
    assert benchmark.train_batched is train_batched  # the profile restored the helpers it wrapped


@pytest.mark.parametrize(
    "argv, message", [(["--sizes", "0,5"], "--sizes"), (["--sizes", "a"], "--sizes"), (["--repeats", "0"], "--repeats")]
)
def test_benchmark_bad_arguments_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
