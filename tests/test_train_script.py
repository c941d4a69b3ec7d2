"""The README's main job: `accelerate launch scripts/train.py`, its outputs, and the default recipe's quality."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import AutoModel

import structured_hf  # noqa: F401  (registers the Auto classes)
from structured_hf.data import NAMED_COLORS
from structured_hf.evaluation import evaluate_color_model
from structured_hf.training import build_trainer, load_recipe

REPO = Path(__file__).resolve().parent.parent


def _accelerate() -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch"]


def test_accelerate_launch_two_steps_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "smoke"
    cmd = _accelerate() + [
        "--config_file",
        str(REPO / "configs/accelerate/cpu.yaml"),
        "--num_cpu_threads_per_process",
        "2",
        str(REPO / "scripts/train.py"),
        str(REPO / "configs/color_autoencoder/default.yaml"),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--seed",
        "3",
        "--set",
        "training.logging_steps=1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in (
        "config.json",
        "model.safetensors",
        "recipe.yaml",
        "metrics.json",
        "log_history.json",
        "latents.png",
        "training_curves.png",
        "README.md",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["named_color_mse"]) == set(NAMED_COLORS)
    assert metrics["train_steps"] == 2 and metrics["seed"] == 3
    assert -1.0 <= metrics["concepts"]["red"]["cosine"] <= 1.0
    assert 0.0 <= metrics["concepts"]["hue"]["leak_max"] <= 1.0
    # The resolved recipe replays the run: overrides are written into it.
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["training"]["max_steps"] == 2 and recipe["seed"] == 3
    # The model card renders the concept map and the evaluation table.
    card = (out / "README.md").read_text()
    assert "library_name: structured_hf" in card and "| red | `bottleneck` |" in card and "| cyan |" in card
    # from_pretrained without trust_remote_code reproduces the saved metrics exactly.
    model = AutoModel.from_pretrained(out)
    assert type(model).__name__ == "ColorAutoencoderModel"
    reloaded = evaluate_color_model(model)
    assert reloaded["named_color_mse"] == metrics["named_color_mse"]


def test_train_script_reports_bad_config_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {bottleneck_dim: 4}\ndata: {train: {grid: rgb}}\ntraining: {learning_rate: 1e-4}\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/train.py"), str(bad), "--output_dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "training.learning_rate" in proc.stderr and "1.0e-4" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_default_recipe_meets_its_quality_targets(tmp_path):
    """A real 1501-step run of the default recipe (seed 0): the claims of the README, checked."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    recipe = load_recipe(
        REPO / "configs/color_autoencoder/default.yaml",
        {"output_dir": str(tmp_path / "default"), "training.disable_tqdm": True, "training.logging_steps": 100},
    )
    trainer = build_trainer(recipe)
    trainer.train()
    metrics = evaluate_color_model(trainer.model)
    assert metrics["named_color_mse_max"] <= 2.0e-3, metrics["named_color_mse"]
    assert metrics["concepts"]["red"]["cosine"] >= 0.98
    assert metrics["concepts"]["hue"]["leak_max"] <= 0.05, metrics["concepts"]["hue"]["leak"]
    # Red sits on axis 0 and the hues go around the (0, 1) plane in order (either direction).
    from structured_hf.data import HUE_NAMES
    from structured_hf.evaluation import site_activations

    z = site_activations(trainer.model, np.asarray([NAMED_COLORS[n] for n in HUE_NAMES]), "bottleneck")
    angles = np.unwrap(np.arctan2(z[:, 1], z[:, 0]))
    steps = np.diff(angles)
    assert (steps > 0).all() or (steps < 0).all(), np.degrees(angles)


def test_readme_commands_are_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    assert len(commands) >= 2
    ci = (REPO / ".ci/run").read_text()
    assert commands[1] in ci, "the README's test command must be exactly what .ci/run runs"
    assert "scripts/train.py configs/color_autoencoder/default.yaml" in commands[0]
