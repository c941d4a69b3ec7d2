"""Conventions HF users expect: documented CLI options, logging instead of prints, report_to TensorBoard."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import assert_every_option_explained, load_script, run_help, tiny_recipe_dict

REPO = Path(__file__).resolve().parent.parent


def test_train_script_help_explains_every_option(capsys, monkeypatch):
    train = load_script("train")
    help_text, parsers = run_help(train.parse_args, capsys, monkeypatch)
    (parser,) = parsers
    assert_every_option_explained(parser, help_text)
    assert "--push_to_hub" in help_text and "--hub_model_id" in help_text
    with pytest.raises(SystemExit) as exit_info:  # a repo name without --push_to_hub is a mistake, not a no-op
        train.parse_args(["x.yaml", "--hub_model_id", "me/x"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("script", sorted(p.stem for p in (REPO / "scripts").glob("*.py")))
def test_every_script_help_explains_every_option(script, capsys, monkeypatch):
    """`scripts/<name>.py --help` exits 0 and every option (and positional) of its parser has a help text."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"_help_{script}", REPO / "scripts" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses in a script resolve through sys.modules
    spec.loader.exec_module(module)
    help_text, parsers = run_help(getattr(module, "parse_args", None) or module.main, capsys, monkeypatch)
    assert parsers, f"scripts/{script}.py parsed no arguments"
    for parser in parsers:
        assert parser.description, f"scripts/{script}.py: the parser has no description"
        assert_every_option_explained(parser, help_text, f"scripts/{script}.py: ")


def test_library_logs_instead_of_printing():
    """The library talks through `logging`/`transformers.logging`; only scripts print their results."""
    offenders = []
    for path in sorted((REPO / "structured_hf").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_report_to_tensorboard_logs_every_term(tmp_path):
    """Runs where TensorBoard is installed (it is not a dependency): every loss term, weight and label count."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tmp_path / "tb.yaml"
    config.write_text(yaml.safe_dump(tiny_recipe_dict(str(tmp_path / "run"), report_to="tensorboard")))
    assert load_script("train").main([str(config), "--no_figures"]) == 0
    (events,) = [
        p
        for p in (tmp_path / "run" / "runs").rglob("events.out.tfevents.*")
        if p.stat().st_size > 0 and "train/term/anchor-red" in _scalars(EventAccumulator, p)
    ]
    tags = _scalars(EventAccumulator, events)
    for tag in (
        "train/loss",
        "train/term/reconstruction",
        "train/term/anchor-red",
        "train/term/plane",
        "train/term/separate",
        "train/weight/anchor-red",
        "train/labels/red",
        "train/learning_rate",
    ):
        assert tag in tags, tag


def _scalars(accumulator_cls, path: Path) -> list[str]:
    acc = accumulator_cls(str(path))
    acc.Reload()
    return acc.Tags()["scalars"]
