"""Shared fixtures: tiny recipes and offline settings for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the test suite may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo_root() -> Path:
    return REPO


def tiny_recipe_dict(output_dir: str, max_steps: int = 4, **training) -> dict:
    """A small but complete recipe: red anchor + hue plane + repulsion on a 4³ grid."""
    return {
        "seed": 0,
        "output_dir": output_dir,
        "model": {
            "bottleneck_dim": 4,
            "hidden_dim": 8,
            "concepts": [
                {"name": "red", "site": "bottleneck", "direction": [1.0, 0.0, 0.0, 0.0], "prototypes": ["red"]},
                {"name": "hue", "site": "bottleneck", "axes": [0, 1], "prototypes": ["red", "green", "blue"]},
            ],
        },
        "data": {
            "train": {"grid": "rgb", "size": 4},
            "eval": {"grid": "rgb", "size": 3},
            "labels": {"red": {"scale": 0.5, "power": 2.0}, "vibrant": {"scale": 0.5, "power": 2.0}},
            "eval_labels": {"red": ["red"]},
        },
        "regularizers": [
            {"name": "anchor-red", "loss": "angular_anchor", "concept": "red", "label": "red", "weight": 0.1},
            {"name": "plane", "loss": "subspace", "concept": "hue", "label": "vibrant", "weight": 0.1},
            {"name": "separate", "loss": "angular_repulsion", "site": "bottleneck", "weight": 0.01},
        ],
        "schedules": {"learning_rate": {"interpolation": "linear", "keys": [[0, 1.0e-2], [max_steps, 1.0e-3]]}},
        "training": {
            "max_steps": max_steps,
            "per_device_train_batch_size": 16,
            "learning_rate": 1.0e-2,
            "sample_with_replacement": True,
            "logging_steps": 1,
            "save_strategy": "no",
            "disable_tqdm": True,
            "report_to": "none",
            **training,
        },
    }


@pytest.fixture
def tiny_recipe(tmp_path):
    return lambda **kw: tiny_recipe_dict(str(tmp_path / "run"), **kw)
