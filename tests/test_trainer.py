"""AnchoredTrainer: loss composition, gradient accumulation, schedules, logging, non-finite guard, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from structured_hf import (
    ColorAutoencoderConfig,
    ColorAutoencoderModel,
    ConceptMap,
    NonFiniteLossError,
    StructuredConfigError,
)
from structured_hf.data import build_color_dataset, rgb_grid
from structured_hf.losses import LOSSES, LossInfo
from structured_hf.training import AnchoredTrainer, AnchoredTrainingArguments, build_trainer, parse_recipe
from structured_hf.training.arguments import RegularizerSpec

CONCEPTS = [
    {"name": "red", "site": "bottleneck", "direction": [1.0, 0.0, 0.0, 0.0]},
    {"name": "hue", "site": "bottleneck", "axes": [0, 1]},
]


def _exact_dataset():
    """Labels with probability exactly 0 or 1, so every draw is the same however the RNG is consumed."""
    colors = rgb_grid(4)
    reds = colors[(colors[:, 0] > 0.5) & (colors[:, 1] < 0.5)]
    vivid = colors[(colors.max(1) - colors.min(1)) > 0.6]
    return build_color_dataset(colors, exact_labels={"red": reds, "vibrant": vivid})


def _trainer(tmp_path, batch: int, accumulation: int, regularizers: list[dict], steps: int = 2, optim: str = "sgd"):
    torch.manual_seed(0)
    model = ColorAutoencoderModel(ColorAutoencoderConfig(bottleneck_dim=4, hidden_dim=8, concepts=CONCEPTS))
    args = AnchoredTrainingArguments(
        output_dir=str(tmp_path / f"b{batch}x{accumulation}"),
        max_steps=steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        learning_rate=0.5,
        optim=optim,
        sample_with_replacement=True,
        regularizers=regularizers,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    return AnchoredTrainer(model=model, args=args, train_dataset=_exact_dataset())


PER_SAMPLE_TERMS = [
    {"name": "anchor", "loss": "angular_anchor", "concept": "red", "label": "red", "weight": 0.5},
    {"name": "plane", "loss": "subspace", "concept": "hue", "label": "vibrant", "weight": 0.5},
    {"name": "unit", "loss": "unitarity", "site": "encoder", "weight": 0.1},
]


def test_gradient_accumulation_4x16_equals_64(tmp_path):
    """Plain SGD, so any mis-scaling of the loss (e.g. dividing by the accumulation steps twice) changes the update."""
    full = _trainer(tmp_path, 64, 1, PER_SAMPLE_TERMS)
    full.train()
    accumulated = _trainer(tmp_path, 16, 4, PER_SAMPLE_TERMS)
    accumulated.train()
    for (name, a), b in zip(full.model.named_parameters(), accumulated.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), f"{name} differs: max |Δ| = {(a - b).abs().max():.3g}"
    # Logged terms are full-batch means in both runs.
    for key in ("term/anchor", "term/plane", "term/reconstruction"):
        assert full.state.log_history[0][key] == pytest.approx(accumulated.state.log_history[0][key], rel=1e-5)
    # And the update really moved the weights (the comparison is not trivially between two untouched models).
    torch.manual_seed(0)
    fresh = ColorAutoencoderModel(ColorAutoencoderConfig(bottleneck_dim=4, hidden_dim=8, concepts=CONCEPTS))
    assert not torch.allclose(fresh.encoder.proj.weight, full.model.encoder.proj.weight)


def test_selective_term_is_mean_over_labelled_samples(tmp_path):
    """One step's logged anchor term equals the mean of 1 − cos over the labelled samples of that batch."""
    trainer = _trainer(tmp_path, 64, 1, PER_SAMPLE_TERMS[:1], steps=1)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    with torch.no_grad():
        z = model(colors=batch["colors"]).latents
    labels = batch["concept_labels"]["red"]
    assert labels.sum() > 0
    expected = ((1 - z[:, 0] / z.norm(dim=-1)) * labels).sum() / labels.sum()
    trainer.train()
    assert trainer.state.log_history[0]["term/anchor"] == pytest.approx(float(expected), rel=1e-5)
    assert trainer.state.log_history[0]["labels/red"] == float(labels.sum())


def test_schedules_drive_weights_and_learning_rate(tmp_path, tiny_recipe):
    recipe = tiny_recipe(max_steps=6)
    recipe["regularizers"][0]["weight"] = {"interpolation": "linear", "keys": [[0, 0.0], [4, 0.4]]}
    recipe["schedules"]["learning_rate"] = {"interpolation": "log", "keys": [[0, 1.0e-4], [6, 1.0e-2]]}
    trainer = build_trainer(parse_recipe(recipe))
    trainer.train()
    logs = [row for row in trainer.state.log_history if "loss" in row]
    # The weight logged at step s is the value used for step s (scheduled at the step's start, step index s - 1).
    for row in logs:
        assert row["weight/anchor-red"] == pytest.approx(min(0.1 * (row["step"] - 1), 0.4))
    # A weight of 0 skips the term entirely (step 1 uses weight 0).
    assert "term/anchor-red" not in logs[0]
    lrs = [row["learning_rate"] for row in logs]
    assert lrs == sorted(lrs) and lrs[-1] / lrs[0] > 10


def test_logs_every_term_label_counts_and_weights(tmp_path, tiny_recipe):
    trainer = build_trainer(parse_recipe(tiny_recipe(max_steps=3)))
    trainer.train()
    row = trainer.state.log_history[0]
    for key in (
        "term/reconstruction",
        "term/anchor-red",
        "term/plane",
        "term/separate",
        "labels/red",
        "labels/vibrant",
        "weight/anchor-red",
        "weight/separate",
    ):
        assert key in row, key
    assert all(np.isfinite(v) for k, v in row.items() if k.startswith("term/"))


def test_nan_in_batch_stops_with_term_and_step(tmp_path, tiny_recipe):
    trainer = build_trainer(parse_recipe(tiny_recipe(max_steps=5, save_strategy="steps", save_steps=1)))
    colors = trainer.train_dataset.columns["colors"]
    colors[:] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"'reconstruction' is nan at global step 0"):
        trainer.train()
    assert not list((tmp_path / "run").glob("checkpoint-*")), "no checkpoint may be written after a NaN"


def test_non_finite_regularizer_is_named(tmp_path, tiny_recipe):
    """A user-registered loss that blows up after a few steps stops training at that step, naming the term."""
    calls = {"n": 0}

    def exploding(x, concept=None):
        calls["n"] += 1
        scale = float("inf") if calls["n"] > 2 else 1.0
        return x.square().sum(-1) * scale

    LOSSES["exploding"] = LossInfo(exploding, None)
    try:
        recipe = tiny_recipe(max_steps=6, save_strategy="steps", save_steps=1)
        recipe["regularizers"].append({"name": "boom", "loss": "exploding", "site": "encoder", "weight": 1.0})
        trainer = build_trainer(parse_recipe(recipe))
        with pytest.raises(NonFiniteLossError, match=r"'boom' is inf at global step 2"):
            trainer.train()
        saved = sorted((tmp_path / "run").glob("checkpoint-*"))
        assert [p.name for p in saved] == ["checkpoint-1", "checkpoint-2"]
        for p in saved:
            from safetensors.torch import load_file

            assert all(torch.isfinite(t).all() for t in load_file(p / "model.safetensors").values())
    finally:
        del LOSSES["exploding"]


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, tiny_recipe):
    """Weights, sampler order, label draws and schedules all resume exactly."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:
                control.should_training_stop = True

    base = tiny_recipe(max_steps=10, save_strategy="steps", save_steps=3)
    full = build_trainer(parse_recipe({**base, "output_dir": str(tmp_path / "full")}))
    full.train()

    interrupted = build_trainer(parse_recipe({**base, "output_dir": str(tmp_path / "resumed")}), callbacks=[StopAt()])
    interrupted.train()
    assert interrupted.state.global_step == 6
    resumed = build_trainer(parse_recipe({**base, "output_dir": str(tmp_path / "resumed")}))
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-6"))
    assert resumed.state.global_step == 10
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), f"{name} differs after resume"


def test_same_seed_same_metrics_different_seed_differs(tmp_path, tiny_recipe):
    def losses(seed):
        recipe = tiny_recipe(max_steps=5)
        recipe["seed"] = seed
        recipe["output_dir"] = str(tmp_path / f"s{seed}")
        t = build_trainer(parse_recipe(recipe))
        t.train()
        return [row["loss"] for row in t.state.log_history if "loss" in row]

    assert losses(0) == losses(0)
    assert losses(0) != losses(1)


def test_evaluation_uses_exact_labels(tmp_path, tiny_recipe):
    trainer = build_trainer(parse_recipe(tiny_recipe(max_steps=1)))
    batches = list(trainer.get_eval_dataloader())
    red = torch.cat([b["concept_labels"]["red"] for b in batches])
    colors = torch.cat([b["colors"] for b in batches])
    # Exact labels: red only for RGB (1, 0, 0); the same on every pass (no Bernoulli draw in evaluation).
    assert red.sum() == 1 and torch.equal(colors[red.argmax()], torch.tensor([1.0, 0.0, 0.0]))
    again = torch.cat([b["concept_labels"]["red"] for b in trainer.get_eval_dataloader()])
    assert torch.equal(red, again)
    metrics = trainer.evaluate()
    assert np.isfinite(metrics["eval_loss"])


def _pruned_mses(tmp_path, tiny_recipe, weight: float, keep_weight: float = 0.0) -> tuple[float, float, float]:
    """(pruned reds' MSE to black, pruned greens' MSE to themselves, the undeleted model's MSE)."""
    from structured_hf.interventions import prune

    recipe = tiny_recipe(max_steps=200)
    recipe["output_dir"] = str(tmp_path / f"w{weight}-{keep_weight}")
    recipe["model"]["concepts"].append({"name": "reserved", "site": "bottleneck", "axes": [0]})
    recipe["data"]["train"]["size"] = 6
    recipe["data"]["labels"]["cool"] = {"feature": "greenness", "scale": 1.0, "power": 2.0}
    recipe["schedules"]["learning_rate"] = {"interpolation": "linear", "keys": [[0, 3.0e-2], [200, 3.0e-2]]}
    recipe["regularizers"].append(
        {
            "name": "red-to-black",
            "loss": "deletion_target",
            "concept": "reserved",
            "label": "red",
            "params": {"target": "black"},
            "weight": weight,
        }
    )
    recipe["regularizers"].append(
        {
            "name": "cool-survives",
            "loss": "deletion_target",
            "concept": "reserved",
            "label": "cool",
            "params": {"target": "unchanged"},
            "weight": keep_weight,
        }
    )
    trainer = build_trainer(parse_recipe(recipe))
    trainer.train()
    model = trainer.model.eval()
    colors = rgb_grid(6)
    reds = colors[(colors[:, 0] > 0.7) & (colors[:, 1] < 0.3) & (colors[:, 2] < 0.3)]
    greens = colors[(colors[:, 1] > 0.7) & (colors[:, 0] < 0.3) & (colors[:, 2] < 0.3)]
    pruned = prune(model, axes=[0])
    with torch.no_grad():
        out = pruned(torch.as_tensor(reds, dtype=torch.float32)).reconstruction.numpy()
        kept = pruned(torch.as_tensor(greens, dtype=torch.float32)).reconstruction.numpy()
        full = model(torch.as_tensor(colors, dtype=torch.float32)).reconstruction.numpy()
    return (
        float(np.square(out).mean()),
        float(np.square(kept - greens).mean()),
        float(np.square(full - colors).mean()),
    )


def test_deletion_target_decides_what_pruning_does_to_labelled_samples(tmp_path, tiny_recipe):
    # Same seed and data; the only difference is the term's weight (0 skips it). With it, the pruned model maps
    # reds close to the target color, and the undeleted model still reconstructs.
    with_term, _, recon = _pruned_mses(tmp_path, tiny_recipe, 1.0)
    without, _, _ = _pruned_mses(tmp_path, tiny_recipe, 0.0)
    assert with_term < 0.02
    assert without > 3 * with_term
    assert recon < 0.02


def test_deletion_target_unchanged_makes_pruning_leave_labelled_samples_alone(tmp_path, tiny_recipe):
    # Both runs send pruned reds to black; only the second also asks that pruning leave greens as they decode.
    _, greens_plain, _ = _pruned_mses(tmp_path, tiny_recipe, 1.0, keep_weight=0.0)
    reds_kept, greens_kept, recon = _pruned_mses(tmp_path, tiny_recipe, 1.0, keep_weight=0.3)
    assert greens_plain > 5 * greens_kept  # measured 0.25 vs 0.019
    assert reds_kept < 0.05  # red is still deleted
    assert recon < 0.02


@pytest.mark.parametrize(
    "change, match",
    [
        ({"label": None}, "needs a label"),
        ({"params": {"target": "reddish"}}, "unknown color 'reddish'"),
        ({"params": {"target": "unchange"}}, "unknown color 'unchange'"),
        ({"params": {"colour": "black"}}, r"no parameter\(s\) \['colour'\]; it takes \['target'\]"),
        ({"concept": "red"}, "needs a concept with axes"),
    ],
)
def test_deletion_target_spec_errors_name_the_problem(tmp_path, tiny_recipe, change, match):
    recipe = tiny_recipe()
    recipe["model"]["concepts"].append({"name": "reserved", "site": "bottleneck", "axes": [0]})
    spec = {
        "name": "red-to-black",
        "loss": "deletion_target",
        "concept": "reserved",
        "label": "red",
        "params": {"target": "black"},
        "weight": 0.1,
        **change,
    }
    recipe["regularizers"].append({k: v for k, v in spec.items() if v is not None})
    with pytest.raises(StructuredConfigError, match=match):
        build_trainer(parse_recipe(recipe))


def test_deletion_target_needs_a_model_with_a_deletion_readout():
    from structured_hf.training.trainer import _bind_regularizers

    spec = RegularizerSpec.from_dict({"loss": "deletion_target", "concept": "reserved", "label": "red"}, "reg")
    concepts = ConceptMap.parse([{"name": "reserved", "site": "bottleneck", "axes": [0]}])
    with pytest.raises(StructuredConfigError, match="Linear has no deletion_readout"):
        _bind_regularizers([spec], concepts, {"bottleneck": 4}, None, torch.nn.Linear(2, 2))


def test_unknown_loss_parameter_fails_at_construction(tmp_path, tiny_recipe):
    recipe = tiny_recipe()
    recipe["regularizers"][2]["params"] = {"powr": 3.0}
    with pytest.raises(StructuredConfigError, match=r"'separate'.*no parameter\(s\) \['powr'\]; it takes \['power'\]"):
        build_trainer(parse_recipe(recipe))
