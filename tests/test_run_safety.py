"""Nothing lost, nothing silently wrong: the non-finite guards, one run per output folder, resume only from
complete checkpoints of the same run, and recipe values checked before anything is written."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe_dict
from safetensors.torch import load_file

from structured_hf import ColorAutoencoderConfig, ColorAutoencoderModel, StructuredConfigError
from structured_hf.errors import NonFiniteGradientError, NonFiniteWeightsError
from structured_hf.experiment import run_experiment
from structured_hf.run_folder import CHECKPOINT_MARKER, RUN_FILE, checkpoint_problem
from structured_hf.training import build_trainer, load_recipe, parse_recipe
from structured_hf.training.recipe import parse_set_overrides

REPO = Path(__file__).resolve().parent.parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRAIN = _script("train")


def _recipe_file(tmp_path: Path, out: Path, max_steps: int = 6, **changes) -> Path:
    raw = tiny_recipe_dict(str(out), max_steps=max_steps, save_strategy="steps", save_steps=2)
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path = tmp_path / f"recipe-{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _train(config: Path, *extra: str) -> int:
    return TRAIN.main([str(config), "--no_figures", *extra])


# ---- 1. non-finite gradients and weights never reach disk ---------------------------------------------------------
def test_overflowing_gradient_is_stopped_before_the_step_and_names_its_term(tmp_path):
    """A finite loss whose gradient overflows (repulsion weight 1e38): the error names `separate`, not the
    reconstruction term it would have poisoned one step later, and no checkpoint or model is written."""
    out = tmp_path / "run"
    raw = tiny_recipe_dict(str(out), max_steps=1, save_strategy="steps", save_steps=1)
    raw["regularizers"][2]["weight"] = 1.0e38
    with pytest.raises(NonFiniteGradientError, match="'separate'") as info:
        run_experiment(parse_recipe(raw), figures=False)
    assert info.value.terms == ["separate"] and "reconstruction" not in info.value.terms
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()
    assert json.loads((out / RUN_FILE).read_text())["status"] == "failed"


def test_diverging_run_stops_instead_of_finishing(tmp_path):
    """learning rate 1e6: the gradient norm overflows within a few steps; the run fails, every checkpoint that was
    written before is finite, and the folder says failed, not finished."""
    out = tmp_path / "run"
    config = _recipe_file(
        tmp_path, out, max_steps=6, **{"schedules": {"learning_rate": 1.0e6}, "training.learning_rate": 1.0e6}
    )
    assert _train(config) == 1
    assert not (out / "model.safetensors").exists()
    for checkpoint in out.glob("checkpoint-*"):
        assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "model.safetensors").values())
    assert json.loads((out / RUN_FILE).read_text())["status"] == "failed"


def test_saving_non_finite_weights_is_refused_before_writing(tmp_path):
    trainer = build_trainer(parse_recipe(tiny_recipe_dict(str(tmp_path / "run"))))
    with torch.no_grad():
        trainer.model.decoder.out.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="decoder.out.weight"):
        trainer.save_model(str(tmp_path / "saved"))
    assert not (tmp_path / "saved").exists()


# ---- 2. one run per output folder ---------------------------------------------------------------------------------
def test_reused_output_folder_is_refused_and_overwrite_clears_the_old_run(tmp_path):
    out = tmp_path / "run"
    config = _recipe_file(tmp_path, out)
    assert _train(config) == 0
    (out / "old-figure.png").write_bytes(b"old")
    before = (out / "model.safetensors").read_bytes(), (out / "recipe.yaml").read_text()

    other = _recipe_file(tmp_path, out, **{"seed": 5})
    assert _train(other) == 2  # refused: nothing of the first run changes
    assert ((out / "model.safetensors").read_bytes(), (out / "recipe.yaml").read_text()) == before

    assert _train(other, "--overwrite_output_dir", "--set", "training.save_steps=3") == 0
    assert not (out / "old-figure.png").exists()  # the old run's files are gone, not embedded in the new card
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert yaml.safe_load((out / "recipe.yaml").read_text())["seed"] == 5
    assert json.loads((out / RUN_FILE).read_text())["status"] == "finished"


def test_overwrite_never_empties_a_folder_that_is_not_a_run(tmp_path):
    """`--output_dir .` from the repository root would have replaced the project's README with a model card."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my project")
    config = _recipe_file(tmp_path, project)
    assert _train(config) == 2
    assert _train(config, "--overwrite_output_dir") == 2
    assert [p.name for p in project.iterdir()] == ["README.md"]
    assert (project / "README.md").read_text() == "my project"


def test_a_recipe_that_fails_to_build_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "run"
    raw = tiny_recipe_dict(str(out))
    raw["regularizers"][0]["label"] = "blue"  # no such label in the data: fails when the trainer is built
    with pytest.raises(StructuredConfigError):
        run_experiment(parse_recipe(raw), figures=False)
    assert not out.exists()


# ---- 3. resume: complete checkpoints of the same run only ---------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("finished")
    out = base / "run"
    config = _recipe_file(base, out, max_steps=6)
    assert _train(config) == 0
    return config, out


def _copy_run(finished_run, tmp_path) -> tuple[Path, Path]:
    import shutil

    config, out = finished_run
    target = tmp_path / "run"
    shutil.copytree(out, target)
    raw = yaml.safe_load(config.read_text())
    raw["output_dir"] = str(target)
    new_config = tmp_path / "recipe.yaml"
    new_config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return new_config, target


@pytest.mark.parametrize("damage", ["no_marker", "empty_rng", "no_trainer_state", "truncated_weights"])
def test_resume_skips_incomplete_checkpoints_with_a_warning(finished_run, tmp_path, caplog, damage):
    config, out = _copy_run(finished_run, tmp_path)
    newest = out / "checkpoint-6"
    if damage == "no_marker":
        (newest / CHECKPOINT_MARKER).unlink()
    elif damage == "empty_rng":
        next(newest.glob("rng_state*.pth")).write_bytes(b"")
    elif damage == "no_trainer_state":
        (newest / "trainer_state.json").unlink()
    else:
        data = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(data[:-16])
    assert checkpoint_problem(newest) is not None
    with caplog.at_level(logging.WARNING, logger="structured_hf.run_folder"):
        assert _train(config, "--resume_from_checkpoint") == 0
    assert "checkpoint-6" in caplog.text  # named in the warning
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed"]["from_step"] == 4  # fell back to checkpoint-4 and trained 2 steps
    # Resuming from checkpoint-4 reproduces the uninterrupted run bit for bit.
    reference = load_file(finished_run[1] / "model.safetensors")
    resumed = load_file(out / "model.safetensors")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_explicit_damaged_checkpoint_is_refused_naming_the_file(finished_run, tmp_path, capsys):
    config, out = _copy_run(finished_run, tmp_path)
    weights = out / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert _train(config, "--resume_from_checkpoint", str(out / "checkpoint-4")) == 2
    assert str(weights) in capsys.readouterr().err


def test_resume_with_a_changed_recipe_is_refused_unless_allowed(finished_run, tmp_path, capsys):
    config, out = _copy_run(finished_run, tmp_path)
    recipe_before = (out / "recipe.yaml").read_text()
    assert _train(config, "--resume_from_checkpoint", "--seed", "5") == 2
    err = capsys.readouterr().err
    assert "seed" in err and "--allow_recipe_change" in err
    assert (out / "recipe.yaml").read_text() == recipe_before  # not rewritten
    assert _train(config, "--resume_from_checkpoint", "--max_steps", "8", "--allow_recipe_change") == 0
    assert json.loads((out / RUN_FILE).read_text())["resumes"][-1]["recipe_changed"] is True


def test_resume_refuses_a_checkpoint_of_another_run(finished_run, tmp_path, capsys):
    config, out = _copy_run(finished_run, tmp_path)
    run = json.loads((out / RUN_FILE).read_text())
    run["run_id"] = "someone-else"
    (out / RUN_FILE).write_text(json.dumps(run))
    assert _train(config, "--resume_from_checkpoint") == 2
    assert "mix two runs" in capsys.readouterr().err


def test_resume_and_overwrite_together_is_refused(finished_run, tmp_path, capsys):
    config, _ = _copy_run(finished_run, tmp_path)
    assert _train(config, "--resume_from_checkpoint", "--overwrite_output_dir") == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err


# Kill points: between steps, and inside a checkpoint save (after the weights, in the RNG file, before the marker).
_CHILD = r"""
import os, signal, sys
sys.path.insert(0, {scripts!r})
point, at = sys.argv[1], int(sys.argv[2])
import transformers.trainer as T
from transformers.trainer_callback import CallbackHandler
import structured_hf.training.guards as ours

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "step":
    original = CallbackHandler.on_step_end
    def on_step_end(self, args, state, control):
        if state.global_step == at:
            die()
        return original(self, args, state, control)
    CallbackHandler.on_step_end = on_step_end
elif point == "after_weights":
    original = T.Trainer._save_optimizer_and_scheduler
    def save(self, output_dir):
        if self.state.global_step == at:
            die()
        return original(self, output_dir)
    T.Trainer._save_optimizer_and_scheduler = save
elif point == "rng_half_written":
    original = T.Trainer._save_rng_state
    def save(self, output_dir):
        if self.state.global_step == at:
            open(os.path.join(output_dir, "rng_state.pth"), "wb").close()
            die()
        return original(self, output_dir)
    T.Trainer._save_rng_state = save
elif point == "before_marker":
    original = ours.write_checkpoint_marker
    def mark(folder, identity):
        if identity["global_step"] == at:
            die()
        return original(folder, identity)
    ours.write_checkpoint_marker = mark
import train
sys.exit(train.main(sys.argv[3:]))
"""


@pytest.mark.parametrize(
    "point, at", [("step", 5), ("after_weights", 4), ("rng_half_written", 4), ("before_marker", 6)]
)
def test_kill_9_then_resume_is_bit_identical(finished_run, tmp_path, point, at):
    """A real SIGKILL of the training process (between steps, or at three points inside a checkpoint save), then
    `--resume_from_checkpoint`: the final weights equal the uninterrupted run's bit for bit."""
    reference_config, reference_out = finished_run
    out = tmp_path / "run"
    raw = yaml.safe_load(reference_config.read_text())
    raw["output_dir"] = str(out)
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    child = _CHILD.format(scripts=str(REPO / "scripts"))
    proc = subprocess.run(
        [sys.executable, "-c", child, point, str(at), str(config), "--no_figures"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / RUN_FILE).read_text())["status"] == "running"
    assert _train(config, "--resume_from_checkpoint") == 0
    reference = load_file(reference_out / "model.safetensors")
    resumed = load_file(out / "model.safetensors")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


# ---- 4. bad settings fail when the recipe is loaded, before anything is written ------------------------------------
BAD_SETTINGS = [
    ("regularizers.separate.params.power", "1e2", "regularizers[2] ('separate').params.power", "write 1.0e+2"),
    ("regularizers.separate.params.power", -1.0, "regularizers[2] ('separate').params.power", "> 0"),
    ("regularizers.plane.params.relative", "yes", "regularizers[1] ('plane').params.relative", "true or false"),
    ("regularizers.anchor-red.weight", -0.1, "regularizers[0].weight", ">= 0"),
    ("schedules.learning_rate", {"keys": [[0, 1.0e-2], [4, -1.0e-3]]}, "schedules.learning_rate.keys[1]", ">= 0"),
    ("training.learning_rate", -0.1, "training.learning_rate", "> 0"),
    ("training.learning_rate", 1.0e-5, "training.learning_rate", "would be ignored"),  # the recipe has a schedule
    ("training.learning_rate", "1e3", "training.learning_rate", "write 1.0e+3"),
    ("training.max_steps", 0, "training.max_steps", "at least 1"),
    ("training.max_steps", -5, "training.max_steps", "at least 1"),
    ("training.per_device_train_batch_size", 100_000_000, "training.per_device_train_batch_size", "exhaust memory"),
    ("training.per_device_train_batch_size", 0, "training.per_device_train_batch_size", ">= 1"),
    ("training.gradient_accumulation_steps", 0, "training.gradient_accumulation_steps", ">= 1"),
    ("training.adam_beta1", 1.5, "training.adam_beta1", "<= 1.0"),
    ("seed", -3, "seed", "2^32"),
    ("seed", 2**40, "seed", "2^32"),
]


@pytest.mark.parametrize("key, value, field, message", BAD_SETTINGS)
def test_bad_values_fail_at_load_naming_the_field(tmp_path, key, value, field, message):
    out = tmp_path / "run"
    config = _recipe_file(tmp_path, out)
    with pytest.raises(StructuredConfigError) as info:
        load_recipe(config, {key: value})
    assert info.value.field == field and message in str(info.value)
    assert _train(config, "--set", f"{key}={json.dumps(value)}") == 2
    assert not out.exists()


def test_cone_cosine_out_of_range_fails_at_load_not_in_the_final_evaluation(tmp_path):
    config = REPO / "configs/color_autoencoder/ex2.4.4-suppress-red-cone-anchors.yaml"
    with pytest.raises(StructuredConfigError, match=r"yellow-cone.*|params.cosine") as info:
        load_recipe(config, {"regularizers.yellow-cone.params.cosine": 2.0, "output_dir": str(tmp_path / "x")})
    assert info.value.field.endswith("params.cosine") and "[-1.0, 1.0]" in str(info.value)


def test_duplicate_yaml_keys_are_an_error(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "seed: 0\nmodel: {}\ndata: {train: {grid: rgb, size: 4}}\n"
        "training: {per_device_train_batch_size: 8}\ntraining: {logging_steps: 1}\n"
    )
    with pytest.raises(StructuredConfigError, match="duplicate key.*line 4.*line 5") as info:
        load_recipe(path)
    assert info.value.field == "training"
    path.write_text("seed: 0\nmodel: {bottleneck_dim: 4, bottleneck_dim: 5}\ndata: {}\n")
    with pytest.raises(StructuredConfigError, match="duplicate key") as info:
        load_recipe(path)
    assert info.value.field == "bottleneck_dim"


def test_malformed_set_value_names_the_set(capsys, tmp_path):
    with pytest.raises(StructuredConfigError) as info:
        parse_set_overrides(["training.max_steps=[1"])
    assert info.value.field == "--set training.max_steps=[1"
    assert _train(_recipe_file(tmp_path, tmp_path / "run"), "--set", "training.max_steps=[1") == 2
    assert "--set training.max_steps=[1" in capsys.readouterr().err


def test_max_steps_flag_must_be_positive(tmp_path):
    with pytest.raises(SystemExit):
        _train(_recipe_file(tmp_path, tmp_path / "run"), "--max_steps", "0")
    assert not (tmp_path / "run").exists()


# ---- 5. scripts/evaluate.py and scripts/label_text.py use the library's checks -------------------------------------
@pytest.fixture(scope="module")
def color_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("color") / "model"
    concepts = [{"name": "red", "site": "bottleneck", "direction": [1.0, 0.0, 0.0, 0.0], "prototypes": ["red"]}]
    ColorAutoencoderModel(ColorAutoencoderConfig(bottleneck_dim=4, hidden_dim=8, concepts=concepts)).save_pretrained(
        path
    )
    return path


def _evaluate(*argv: str) -> int:
    return _script("evaluate").main(list(argv))


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_evaluate_refuses_truncated_and_nan_checkpoints_naming_the_file(color_model_dir, tmp_path, capsys):
    truncated = _copy_model(color_model_dir, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    assert _evaluate("--model", str(truncated), "--output_dir", str(tmp_path / "e1")) == 2
    assert str(weights) in capsys.readouterr().err

    nan = _copy_model(color_model_dir, tmp_path / "nan")
    state = load_file(nan / "model.safetensors")
    first = sorted(state)[0]
    state[first] = torch.full_like(state[first], float("nan"))
    from safetensors.torch import save_file

    save_file(state, nan / "model.safetensors", metadata={"format": "pt"})
    assert _evaluate("--model", str(nan), "--output_dir", str(tmp_path / "e2")) == 2
    assert "NaN" in capsys.readouterr().err
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()


def test_evaluate_plain_transformers_model_is_a_clear_error(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8)).save_pretrained(folder)
    assert _evaluate("--model", str(folder), "--output_dir", str(tmp_path / "eval")) == 2
    err = capsys.readouterr().err
    assert "'gpt2'" in err and "concept map" in err and "AttributeError" not in err


def test_evaluate_mistyped_local_path_is_not_looked_up_on_the_hub(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    assert _evaluate("--model", "outputs/nothere", "--output_dir", "eval") == 2
    assert "no such model folder" in capsys.readouterr().err


def test_evaluate_into_the_model_folder_is_refused(color_model_dir, tmp_path, capsys):
    model = _copy_model(color_model_dir, tmp_path / "model")
    assert _evaluate("--model", str(model), "--output_dir", str(model)) == 2
    assert "model folder" in capsys.readouterr().err
    assert not (model / "latents.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--intervention", "axes:-1"], "non-negative integers"),
        (["--anchor", "chartreuse-ish"], "chartreuse-ish"),
    ],
)
def test_evaluate_misleading_messages_are_fixed(color_model_dir, tmp_path, capsys, argv, message):
    assert _evaluate("--model", str(color_model_dir), "--output_dir", str(tmp_path / "e"), *argv) == 2
    err = capsys.readouterr().err
    assert message in err and "unknown concept '-1'" not in err


def test_evaluate_prune_on_a_gpt_names_prune(tmp_path, capsys):
    from structured_hf import StructuredGPTConfig, StructuredGPTForCausalLM

    folder = tmp_path / "gpt"
    config = StructuredGPTConfig(
        vocab_size=32,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        max_position_embeddings=16,
        concepts=[{"name": "violence", "site": "layers.0.residual_post", "axes": [0]}],
    )
    StructuredGPTForCausalLM(config).save_pretrained(folder)
    assert _evaluate("--model", str(folder), "--output_dir", str(tmp_path / "e"), "--prune", "violence") == 2
    err = capsys.readouterr().err
    assert "error: --prune:" in err and "--ablate:" not in err


def test_label_text_errors_before_labelling(tmp_path, capsys):
    label = _script("label_text")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n\nsecond paragraph".encode("latin-1"))
    common = ["--source", str(latin), "--labelers", "keywords", "--no_calibration", "--no_progress"]
    assert label.main([*common, "--output_dir", str(tmp_path / "o1")]) == 2
    assert str(latin) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        label.main([*common, "--output_dir", str(tmp_path / "o2"), "--batch_size", "0"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert label.main([*common, "--output_dir", str(blocker / "out")]) == 2
    assert "cannot write" in capsys.readouterr().err

    from structured_hf.data.text import SplitConfig

    # A one-chunk corpus whose only chunk the (hash-based) split assignment puts outside train.
    name = next(f"doc{i}.txt" for i in range(100) if SplitConfig(by="chunk").assign(f"doc{i}.txt#0") != "train")
    tiny = tmp_path / name
    tiny.write_text("One short line.")
    assert (
        label.main(
            [
                "--source",
                str(tiny),
                "--labelers",
                "keywords",
                "--no_calibration",
                "--no_progress",
                "--split_by",
                "chunk",
                "--output_dir",
                str(tmp_path / "o3"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "train split is empty" in err and "splits.by: chunk" not in err
    assert not (tmp_path / "o3").exists()


# ---- property: shipped recipes under out-of-range / wrongly typed mutations ---------------------------------------
def _numeric_paths(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _numeric_paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _numeric_paths(v, (*prefix, i))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield prefix


_SHIPPED = yaml.safe_load((REPO / "configs/color_autoencoder/ex2.4.4-suppress-red-cone-anchors.yaml").read_text())
_PATHS = [p for p in _numeric_paths(_SHIPPED) if p[0] in ("regularizers", "schedules", "training", "seed", "data")]


def test_mutated_shipped_recipe_trains_or_fails_before_writing(tmp_path):
    """Hypothesis mutates numeric fields of a shipped recipe into out-of-range or wrongly typed values; each mutant
    either trains 2 steps cleanly or fails with a StructuredConfigError naming a field before anything is written."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    junk = st.one_of(
        st.sampled_from(
            [-1, 0, -1.0e-3, 1.0e9, 2**33, "1e-3", "abc", True, None, [], {}, 1.5, -0.5, float("nan"), float("inf")]
        ),
        st.floats(allow_nan=True, allow_infinity=True, width=32),
        st.integers(-10, 10),
    )
    outcomes = {"trained": 0, "refused": 0, "stopped": 0}
    folders = itertools.count()  # a fresh folder for every call, replays of a failing example included

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(path=st.sampled_from(_PATHS), value=junk)
    def check(path, value):
        raw = copy.deepcopy(_SHIPPED)
        node = raw
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        out = tmp_path / f"run-{next(folders)}"
        raw["output_dir"] = str(out)
        raw.setdefault("training", {}).update(max_steps=2, disable_tqdm=True, save_strategy="no")
        try:
            trainer = build_trainer(parse_recipe(raw))
        except StructuredConfigError as e:
            assert e.field and str(e)
            assert not out.exists()
            outcomes["refused"] += 1
            return
        try:
            trainer.train()
            outcomes["trained"] += 1
        except FloatingPointError:
            # A valid but diverging setting (a learning rate of 1e9): the guard stops it before the optimizer step.
            outcomes["stopped"] += 1
        assert all(torch.isfinite(p).all() for p in trainer.model.parameters())

    check()
    assert outcomes["refused"] > 0 and outcomes["trained"] > 0, outcomes
