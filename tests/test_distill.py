"""Distillation into a fresh model (training/distill.py): a student trained on a teacher's outputs only matches it
better than chance, shares none of its weights, and bad teachers fail naming the field."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from torch.nn import functional as F

import structured_hf  # noqa: F401
from structured_hf.data.collators import LMBlockCollator
from structured_hf.errors import StructuredConfigError
from structured_hf.evaluation.color_metrics import reconstruct
from structured_hf.models import (
    ColorAutoencoderConfig,
    ColorAutoencoderModel,
    StructuredGPTConfig,
    StructuredGPTForCausalLM,
)
from structured_hf.training import AnchoredTrainingArguments, build_trainer, load_recipe
from structured_hf.training.distill import DistillationTrainer, DistillSpec, check_teacher, distillation_kl

ROOT = Path(__file__).resolve().parents[1]
VOCAB, BLOCK, WIDTH = 32, 12, 16


def _gpt(seed: int, vocab: int = VOCAB) -> StructuredGPTForCausalLM:
    torch.manual_seed(seed)
    return StructuredGPTForCausalLM(
        StructuredGPTConfig(
            vocab_size=vocab, max_position_embeddings=BLOCK, hidden_size=WIDTH, num_layers=2, num_heads=2
        )
    )


def _blocks(n: int, seed: int) -> datasets.Dataset:
    ids = np.random.default_rng(seed).integers(3, VOCAB, (n, BLOCK)).astype(np.int32)
    return datasets.Dataset.from_dict(
        {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids, dtype=np.int8),
            "labels": ids,
            "prob_violence": np.zeros(n, dtype=np.float32),
        }
    )


@torch.no_grad()
def _kl(teacher, student, ids: torch.Tensor) -> float:
    return float(distillation_kl(student(input_ids=ids).logits, teacher(input_ids=ids).logits, ids))


def test_distilled_student_matches_its_teacher_and_shares_no_weights(tmp_path):
    teacher = _gpt(0)
    with torch.no_grad():  # a sharp teacher: its next-token distribution is far from uniform
        teacher.wte.weight.mul_(12.0)
    teacher.eval()
    student = _gpt(1)
    held_out = torch.as_tensor(np.asarray(_blocks(16, 99)["input_ids"]), dtype=torch.long)
    before = _kl(teacher, student.eval(), held_out)
    with torch.no_grad():
        t = F.log_softmax(teacher(input_ids=held_out).logits[:, :-1], -1)
        chance = float((t.exp() * (t + np.log(VOCAB))).sum(-1).mean())  # KL(teacher || uniform)
    args = AnchoredTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=120,
        per_device_train_batch_size=16,
        learning_rate=1.0e-2,
        logging_steps=20,
        save_strategy="no",
        disable_tqdm=True,
        report_to="none",
        use_cpu=True,
        seed=0,
        data_seed=0,
    )
    trainer = DistillationTrainer(
        model=student,
        args=args,
        train_dataset=_blocks(64, 0),
        data_collator=LMBlockCollator([]),
        eval_data_collator=LMBlockCollator([]),
        teacher=teacher,
    )
    trainer.train()
    after = _kl(teacher, trainer.model.eval(), held_out)
    # evaluation measures the student on the data (its own next-token loss), not its distance to the teacher
    blocks = _blocks(16, 99)
    data_loss = float(trainer.model(input_ids=held_out, labels=held_out).loss)
    assert trainer.evaluate(blocks)["eval_loss"] == pytest.approx(data_loss, rel=1e-5)
    assert abs(data_loss - after) > 0.1, (data_loss, after)
    assert after < 0.5 * chance and after < 0.5 * before, (before, after, chance)
    # no weights from the teacher: every matrix differs and is unrelated (it started from another seed)
    for (name, p), q in zip(trainer.model.named_parameters(), teacher.parameters()):
        if p.ndim == 2 and name != "lm_head.weight":
            cos = F.cosine_similarity(p.detach().flatten(), q.flatten(), dim=0)
            assert not torch.equal(p, q) and abs(float(cos)) < 0.5, name


def test_regression_distillation_through_a_recipe(tmp_path):
    torch.manual_seed(3)
    teacher = ColorAutoencoderModel(ColorAutoencoderConfig(bottleneck_dim=4, hidden_dim=16)).eval()
    teacher.save_pretrained(tmp_path / "teacher")
    recipe = load_recipe(
        ROOT / "configs/color_autoencoder/default.yaml",
        {
            "output_dir": str(tmp_path / "student"),
            "training.max_steps": 150,
            "training.disable_tqdm": True,
            "distill": {"teacher": str(tmp_path / "teacher")},
            "regularizers": [],
            "schedules": {},
        },
    )
    trainer = build_trainer(recipe)
    assert isinstance(trainer, DistillationTrainer)
    colors = np.random.default_rng(0).random((256, 3))
    target = reconstruct(teacher, colors)
    before = float(((reconstruct(trainer.model, colors) - target) ** 2).mean())
    trainer.train()
    after = float(((reconstruct(trainer.model.eval(), colors) - target) ** 2).mean())
    # the student learns the teacher's map, not the identity the recipe's own labels would teach
    identity = float(((colors - target) ** 2).mean())
    assert after < 0.3 * before and after < 0.3 * identity, (before, after, identity)


def test_bad_teachers_name_the_field(tmp_path):
    with pytest.raises(StructuredConfigError) as e:
        check_teacher(_gpt(0, vocab=40), _gpt(1))
    assert e.value.field == "distill.teacher" and "vocabulary" in str(e.value)
    with pytest.raises(StructuredConfigError) as e:
        check_teacher(ColorAutoencoderModel(ColorAutoencoderConfig(bottleneck_dim=4, hidden_dim=8)), _gpt(1))
    assert e.value.field == "distill.teacher"
    for raw, field in (
        ({"teacher": ""}, "distill.teacher"),
        ({"teacher": "x", "temperature": 0}, "distill.temperature"),
        ({"teacher": "x", "alpha": 1}, "distill"),
        ("x", "distill"),
    ):
        with pytest.raises(StructuredConfigError) as e:
            DistillSpec.from_dict(raw)
        assert e.value.field == field
    recipe = load_recipe(
        ROOT / "configs/color_autoencoder/default.yaml",
        {"output_dir": str(tmp_path / "s"), "distill": {"teacher": str(tmp_path / "missing")}},
    )
    with pytest.raises(StructuredConfigError) as e:
        build_trainer(recipe)
    assert e.value.field == "distill.teacher"
