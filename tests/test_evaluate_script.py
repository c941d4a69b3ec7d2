"""scripts/evaluate.py end to end on a local model folder: evaluation.json layout, tables, figures, errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel

import structured_hf  # noqa: F401
from structured_hf import ColorAutoencoderConfig, ColorAutoencoderModel
from structured_hf.data import NAMED_COLORS
from structured_hf.evaluation import reconstruct

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "evaluate.py"

CONCEPTS = [
    {"name": "red", "site": "bottleneck", "direction": [1.0, 0.0, 0.0, 0.0], "prototypes": ["red"]},
    {"name": "hue", "site": "bottleneck", "axes": [0, 1], "prototypes": ["red", "green"]},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    config = ColorAutoencoderConfig(bottleneck_dim=4, hidden_dim=8, concepts=CONCEPTS)
    ColorAutoencoderModel(config).save_pretrained(path)
    return path


def _script():
    spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_script_writes_json_tables_and_figures(model_dir, tmp_path):
    # In-process (the script's main) rather than a subprocess: importing torch + transformers again costs more than
    # the whole evaluation on a shared 2-core machine.
    out = tmp_path / "eval"
    assert (
        _script().main(
            [
                "--model",
                str(model_dir),
                "--intervention",
                "suppress:red",
                "--intervention",
                "repel:red:mapper=linear,a=0.0,b=0.0",
                "--ablate",
                "red",
                "--prune",
                "red",
                "--grid_size",
                "5",
                "--save_variants",
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "evaluation.json").read_text())
    variants = ["suppress:red", "repel:red:mapper=linear,a=0.0,b=0.0", "ablate:red", "prune:red"]
    assert list(result["named_color_mse"]) == ["baseline"] + variants
    for name in ["baseline"] + variants:
        assert set(result["named_color_mse"][name]) == set(NAMED_COLORS)
    assert set(result["scores"]) == set(variants)
    # The numbers are the model's: recompute the baseline and the pruned variant from the saved files.
    named = np.asarray(list(NAMED_COLORS.values()))
    base = ((reconstruct(AutoModel.from_pretrained(model_dir), named) - named) ** 2).mean(-1)
    assert list(result["named_color_mse"]["baseline"].values()) == pytest.approx(base.tolist(), abs=1e-7)
    pruned = AutoModel.from_pretrained(out / "models" / "prune_red")
    assert pruned.config.bottleneck_dim == 3
    err = ((reconstruct(pruned, named) - named) ** 2).mean(-1)
    assert list(result["named_color_mse"]["prune:red"].values()) == pytest.approx(err.tolist(), abs=1e-7)
    # ablate and prune agree per color
    a, p = result["named_color_mse"]["ablate:red"], result["named_color_mse"]["prune:red"]
    assert max(abs(a[c] - p[c]) for c in a) < 1e-6
    assert result["untouched"]["suppress:red"]["bit_identical"] is True
    # The evaluated interventions ship with the evaluation, replayable.
    from structured_hf.interventions import load_specs

    assert [s.to_string() for s in load_specs(out)] == variants
    for name in ("evaluation.md", "evaluation.tex", "swatches.png", "error_vs_similarity.png", "latents.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name


def test_evaluate_script_errors_are_clear(model_dir, tmp_path, capsys):
    main = _script().main
    assert main(["--model", str(model_dir), "--intervention", "suppress:green", "--output_dir", str(tmp_path)]) == 2
    assert "unknown concept 'green'" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "missing"), "--output_dir", str(tmp_path)]) == 2
    assert "no such model folder" in capsys.readouterr().err
    assert main(["--model", str(model_dir), "--intervention", "supress:red", "--output_dir", str(tmp_path)]) == 2
    assert "unknown kind 'supress'" in capsys.readouterr().err
    assert not (tmp_path / "evaluation.json").exists()


def test_evaluate_script_heal_variant_in_process(model_dir, tmp_path):
    main = _script().main
    assert (
        main(
            [
                "--model",
                str(model_dir),
                "--prune",
                "red",
                "--heal_steps",
                "3",
                "--no_figures",
                "--grid_size",
                "4",
                "--output_dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "evaluation.json").read_text())
    assert list(result["named_color_mse"]) == ["baseline", "prune:red", "prune:red:heal=3"]
    assert [r["op"] for r in result["variants"]["prune:red:heal=3"]["surgery"]] == ["prune", "heal"]
    assert not list(tmp_path.glob("*.png"))


def test_every_option_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--model",
        "--intervention",
        "--ablate",
        "--prune",
        "--heal_steps",
        "--anchor",
        "--grid_size",
        "--output_dir",
        "--no_figures",
        "--save_variants",
    ):
        assert option in text
    parser_lines = [line for line in SCRIPT.read_text().splitlines() if "add_argument(" in line]
    assert parser_lines and all(
        "help=" in line or "help=" in SCRIPT.read_text().split(line, 1)[1][:400] for line in parser_lines
    )
