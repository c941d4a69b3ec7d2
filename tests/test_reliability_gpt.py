"""Reliability of StructuredGPT under AnchoredTrainer (issue 8): resume, determinism, hooks after exceptions.

Built directly with AnchoredTrainer + AnchoredTrainingArguments + LMBlockCollator on tiny tokenized blocks (the shape
`tokenize_blocks` writes: right-padded blocks, labels -100 on padding, a ``prob_<concept>`` column per block), with
an anchor and an anti-subspace term on a residual site and weak labels drawn per step.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import structured_hf
from structured_hf import StructuredConfigError, capture, rewrite
from structured_hf.data.collators import LMBlockCollator
from structured_hf.models import StructuredGPTConfig, StructuredGPTForCausalLM
from structured_hf.training import AnchoredTrainer, AnchoredTrainingArguments

SITE = "layers.1.residual_post"
WIDTH, VOCAB, BLOCK = 16, 64, 12
CONCEPTS = [
    {"name": "violence", "site": SITE, "direction": [1.0] + [0.0] * (WIDTH - 1)},
    {"name": "violence-axis", "site": SITE, "axes": [0]},
]
REGULARIZERS = [
    {"name": "anchor", "loss": "angular_anchor", "concept": "violence", "label": "violence", "weight": 0.5},
    {"name": "clear", "loss": "anti_subspace", "concept": "violence-axis", "label": "not:violence", "weight": 0.5},
]


def _blocks(n: int = 40) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, (n, BLOCK)).astype(np.int32)
    mask = np.ones((n, BLOCK), dtype=np.int8)
    lengths = rng.integers(4, BLOCK + 1, n)  # a chunk's last block is right-padded
    for row, length in enumerate(lengths):
        mask[row, length:] = 0
    labels = np.where(mask == 1, ids, -100).astype(np.int32)
    ids = np.where(mask == 1, ids, 0).astype(np.int32)
    return datasets.Dataset.from_dict(
        {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "prob_violence": rng.uniform(0.0, 0.8, n).astype(np.float32),
        }
    )


def _model() -> StructuredGPTForCausalLM:
    return StructuredGPTForCausalLM(
        StructuredGPTConfig(
            vocab_size=VOCAB,
            max_position_embeddings=BLOCK,
            hidden_size=WIDTH,
            num_layers=2,
            num_heads=2,
            concepts=CONCEPTS,
        )
    )


def _trainer(output_dir: Path, callbacks=(), **training) -> AnchoredTrainer:
    training = {"seed": 0, "data_seed": 0, **training}
    args = AnchoredTrainingArguments(
        output_dir=str(output_dir),
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=3.0e-3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=3,
        disable_tqdm=True,
        report_to="none",
        use_cpu=True,
        regularizers=REGULARIZERS,
        # the anchor's weight ramps up across the interruption point: schedules must resume at the right step
        schedules={"learning_rate": {"interpolation": "linear", "keys": [[0, 3.0e-3], [6, 3.0e-4]]}},
        **training,
    )
    torch.manual_seed(args.seed)
    return AnchoredTrainer(
        model=_model(),
        args=args,
        train_dataset=_blocks(),
        data_collator=LMBlockCollator(["violence"]),
        callbacks=list(callbacks),
    )


def _steps(trainer: AnchoredTrainer) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "epoch"} for row in trainer.state.log_history if "loss" in row]


class _StopAfterCheckpoint(TrainerCallback):
    """Ends training right after the checkpoint at ``step`` is written (as a killed job would leave it)."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("gpt") / "full"
    trainer = _trainer(out)
    trainer.train()
    return out / "checkpoint-6", _steps(trainer)


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "model.safetensors")


def test_resume_after_a_checkpoint_gives_the_uninterrupted_weights(tmp_path, uninterrupted):
    full_checkpoint, full_steps = uninterrupted
    assert [r["step"] for r in full_steps] == [1, 2, 3, 4, 5, 6]
    # Weak labels were drawn and both terms acted (labelled and unlabelled blocks in the run).
    assert sum(r["labels/violence"] for r in full_steps) > 0
    assert all(r["term/clear"] > 0 for r in full_steps) and any(r["term/anchor"] > 0 for r in full_steps)

    first = _trainer(tmp_path, callbacks=[_StopAfterCheckpoint(3)])
    first.train()
    assert first.state.global_step == 3 and (tmp_path / "checkpoint-3").is_dir()
    assert not (tmp_path / "checkpoint-6").exists()

    resumed = _trainer(tmp_path)  # a new process would build everything again, with a fresh model
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert resumed.state.global_step == 6
    expected, got = _weights(full_checkpoint), _weights(tmp_path / "checkpoint-6")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name  # bitwise
    # Steps 4-6 drew the same labels and logged the same terms as the uninterrupted run.
    assert _steps(resumed)[-3:] == full_steps[3:]


def test_same_seed_gives_identical_metrics_and_weights(tmp_path, uninterrupted):
    full_checkpoint, full_steps = uninterrupted
    again = _trainer(tmp_path)
    again.train()
    assert _steps(again) == full_steps
    expected, got = _weights(full_checkpoint), _weights(tmp_path / "checkpoint-6")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    other = _trainer(tmp_path / "other", seed=1, data_seed=1)
    other.train()
    assert _steps(other) != full_steps  # the seed matters (model init, order and labels)


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_exception_inside_gpt_interventions_leaves_no_hooks():
    torch.manual_seed(0)
    model = _model().eval()
    ids = torch.randint(3, VOCAB, (2, BLOCK))
    with torch.no_grad():
        clean = model(ids).logits
    assert _hooks(model) == 0

    def boom(_):
        raise RuntimeError("boom in the hook")

    contexts = [
        lambda: capture(model, [SITE, "layers.0.attn.q"]),
        lambda: structured_hf.suppress(model, "violence"),
        lambda: structured_hf.repel(model, "violence"),
        lambda: structured_hf.intervene(
            model,
            ["suppress:violence", "axes:violence-axis", f"suppress:[{','.join(['1'] * WIDTH)}]@layers.0.residual_post"],
        ),
    ]
    for make in contexts:
        with pytest.raises(RuntimeError, match="in the body"), make():
            assert _hooks(model) > 0
            model(ids)
            raise RuntimeError("in the body")
        assert _hooks(model) == 0
        with pytest.raises(RuntimeError, match="boom in the hook"), make(), rewrite(model, SITE, boom):
            model(ids)
        assert _hooks(model) == 0
        # Also during generation (KV cache, several forward passes).
        with pytest.raises(RuntimeError, match="boom in the hook"), make(), rewrite(model, SITE, boom):
            model.generate(ids[:, :4], max_new_tokens=3, do_sample=False)
        assert _hooks(model) == 0
    # A bad concept or site fails before anything is registered.
    with pytest.raises(StructuredConfigError), structured_hf.intervene(model, ["suppress:violence", "suppress:nope"]):
        pass
    assert _hooks(model) == 0
    with torch.no_grad():
        assert torch.equal(model(ids).logits, clean)
