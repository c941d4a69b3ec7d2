"""Model families are plug-ins: a new family is its modeling code plus one `register_family` call, and nothing
outside `structured_hf/families/` branches on a family's name."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig
from transformers.utils import ModelOutput

from structured_hf import StructuredConfigError
from structured_hf.experiment import resume_note, run_experiment, train_and_save
from structured_hf.families import color_autoencoder
from structured_hf.models.base import StructuredPreTrainedModel
from structured_hf.registry import FAMILIES, Family, family_for_model_type, get_family, register_family
from structured_hf.sites import ActivationSite
from structured_hf.training import parse_recipe
from structured_hf.training.recipe import model_config

REPO = Path(__file__).resolve().parent.parent


# ---- a small family of our own: a linear color autoencoder, defined and registered right here ---------------------
@strict
class LinearColorConfig(PreTrainedConfig):
    model_type = "structured_test_linear_color"

    width: int = 4
    concepts: list | None = None

    def __post_init__(self, **kwargs: Any):
        self.concepts = [] if self.concepts is None else self.concepts
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise StructuredConfigError("model.width", f"expected a positive integer, got {self.width!r}")


class LinearColorModel(StructuredPreTrainedModel):
    config_class = LinearColorConfig

    def __init__(self, config: LinearColorConfig):
        super().__init__(config)
        self.encoder = nn.Linear(3, config.width)
        self.latent = ActivationSite("latent", config.width)
        self.decoder = nn.Linear(config.width, 3)
        self.post_init()

    def forward(self, colors: torch.Tensor, labels: torch.Tensor | None = None, **_: Any) -> ModelOutput:
        reconstruction = self.decoder(self.latent(self.encoder(colors)))  # (B, 3)
        target = colors if labels is None else labels
        return ModelOutput(loss=(reconstruction - target).square().mean(), reconstruction=reconstruction)


def _run(recipe, run, figures: bool = True, animation: bool = True) -> dict[str, Any]:
    """The family's run step: train and save (shared), then one metric of its own."""
    trainer, result, runtime = train_and_save(recipe, [], run)
    if not trainer.is_world_process_zero():
        return {}
    metrics = {"train_loss": result.training_loss, "train_runtime_s": runtime}
    resume_note(run, metrics)
    (Path(recipe.output_dir) / "metrics.json").write_text(json.dumps(metrics))
    return metrics


@pytest.fixture
def linear_family():
    # The one registration a new family needs (data and validation borrowed from the color autoencoder's).
    family = register_family(
        Family(
            name="linear_color",
            config_class=LinearColorConfig,
            model_class=LinearColorModel,
            model_types=(LinearColorConfig.model_type,),
            validate=color_autoencoder.validate,
            build=lambda recipe, kwargs, prepared=None: (
                LinearColorModel(model_config(recipe)),
                *color_autoencoder.build_datasets(recipe),
            ),
            datasets=color_autoencoder.build_datasets,
            run=_run,
        )
    )
    yield family
    del FAMILIES["linear_color"]


def test_a_new_family_trains_through_the_whole_library(linear_family, tmp_path):
    """Recipe validation, the trainer's anchoring terms, the run folder and the family's own run step."""
    out = tmp_path / "run"
    raw = {
        "seed": 0,
        "output_dir": str(out),
        "model": {
            "type": "linear_color",
            "width": 4,
            "concepts": [{"name": "red", "site": "latent", "direction": [1.0, 0.0, 0.0, 0.0]}],
        },
        "data": {"train": {"grid": "rgb", "size": 4}, "labels": {"red": {"scale": 0.5, "power": 2.0}}},
        "regularizers": [
            {"name": "anchor-red", "loss": "angular_anchor", "concept": "red", "label": "red", "weight": 0.5}
        ],
        "training": {
            "max_steps": 5,
            "per_device_train_batch_size": 16,
            "learning_rate": 1.0e-2,
            "sample_with_replacement": True,
            "logging_steps": 1,
            "disable_tqdm": True,
        },
    }
    metrics = run_experiment(parse_recipe(raw), figures=False)
    assert metrics["train_loss"] > 0
    assert (out / "model.safetensors").is_file() and json.loads((out / "run.json").read_text())["status"] == "finished"
    history = json.loads((out / "metrics.json").read_text())
    assert history["train_loss"] == metrics["train_loss"]
    assert family_for_model_type("structured_test_linear_color") is linear_family
    with pytest.raises(StructuredConfigError, match=r"model.type: unknown model type 'linear_colour'.*linear_color"):
        raw["model"]["type"] = "linear_colour"
        parse_recipe(raw)


def test_every_shipped_family_is_registered_with_all_its_steps():
    for name in ("color_autoencoder", "color_transformer", "structured_gpt", "pretrained"):
        family = get_family(name)
        assert family.build and family.run and family.datasets and family.evaluate, name
    assert family_for_model_type("structured_gpt").name == "structured_gpt"
    assert family_for_model_type("llama").name == "pretrained"  # models users bring: any architecture with a layout
    assert family_for_model_type("bert") is None


# A comparison of a model type or a recipe's model.type with a family's name, anywhere but where families live.
_BRANCH = re.compile(r"""(model_type|(?<!self)\.type|model_type\([^)]*\))\s*(==|!=|\bin\b)\s*[("'\[]""")


def test_no_family_branches_outside_the_registry():
    offenders = []
    for root in ("structured_hf", "scripts"):
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if (
                rel.startswith(("structured_hf/families/", "structured_hf/layouts/"))
                or rel == "structured_hf/registry.py"
            ):
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if _BRANCH.search(line) and "device.type" not in line:
                    offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
