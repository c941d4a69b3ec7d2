"""Benchmarks of structured_hf training: JSON results plus a short table on stdout (run by scripts/benchmark.py).

    OMP_NUM_THREADS=1 python scripts/benchmark.py [--sections throughput,scaling] [--output_dir outputs/benchmark]
        [--repeats 5] [--threads 1] [--steps N] [--gpt_steps N] [--quick]

Sections (``--sections``, default: every available one):

- ``throughput``: AnchoredTrainer on the default recipe vs a minimal hand-written PyTorch loop doing the same work
  (same model and init, fused AdamW as Trainer builds it, the same three regularizers with step-seeded weak labels,
  the same schedules, batch 64 sampled with replacement, the same gradient clipping). Both run *interleaved in one
  process*, alternating which goes first, so machine noise hits both; the ratio is taken per repeat (paired).
  Each repeat is a full run of the recipe, so the Trainer's wall time of a full 1501-step run comes with it.
- ``scaling``: time per step (Trainer, and the hand loop for the color autoencoder) and peak tensor memory vs batch
  size and width, for the color autoencoder, the color transformer and StructuredGPT; table in the JSON and on stdout,
  plot in ``<output_dir>/scaling.png``.
- ``gpt_throughput``: StructuredGPT training tokens/s with anchoring on (angular anchor + anti-subspace on a residual
  site, weak labels drawn per step) and off vs transformers' GPT2LMHeadModel of the same size holding the same
  initial weights, same TrainingArguments and the same synthetic tokenized blocks; the anchored recipe with a
  gradient route too; rounds of short runs of every variant with rotating order, ratio per round.
- ``isolation_kl``: IsolatedTrainer with ``clear_on: predictions``, the deleted-model logits of the KL kept from the
  ordinary part's own pass against run again; steps/s, the speedup per repeat and a bit-for-bit loss-curve check.
- ``intervention_overhead``: eval forward time with suppression / repulsion / axis hooks vs without, for the color
  autoencoder and the GPT, at several batch sizes.

Models and cases are registered in ``SECTIONS`` and ``SCALING_CASES`` below.

Peak memory is *tensor* memory (parameters, gradients, optimizer state, batch and activations), counted exactly by a
``TorchDispatchMode`` that follows every storage created during a few training steps; it excludes the Python
interpreter and allocator caches, which a CPU process cannot attribute to one run.
"""

from __future__ import annotations

import argparse
import logging
import json
import math
import os
import platform
import statistics
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary
from transformers import PrinterCallback, TrainerCallback, set_seed
from transformers.utils import logging as hf_logging

import structured_hf
from structured_hf.concepts import ConceptMap
from structured_hf.data.collators import ColumnarDataset, LMBlockCollator
from structured_hf.models import StructuredGPTConfig, StructuredGPTForCausalLM
from structured_hf.training import AnchoredTrainer, AnchoredTrainingArguments
from structured_hf.training.isolation import IsolatedTrainer
from structured_hf.visualization.style import save_figure
from structured_hf.models.structured_gpt.convert import to_gpt2
from structured_hf.training import build_trainer, load_recipe
from structured_hf.training.recipe import MODEL_TYPES, Recipe, build_datasets, model_config

logger = logging.getLogger(__name__)
# The shipped recipes are read from the working directory's configs/ (a clone of the repository), else from the
# source tree this module sits in (an editable install).
REPO = Path.cwd() if (Path.cwd() / "configs").is_dir() else Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "color_autoencoder" / "default.yaml"
RATIO_TARGET = 0.8  # issue 8: Trainer >= 0.8x the hand loop


# ---- timing helpers ---------------------------------------------------------------------------------------------
class _StepClock(TrainerCallback):
    """Timestamps the end of step ``start`` and of the last step (steady-state rate, without setup and warm-up)."""

    def __init__(self, start: int):
        self.start = start
        self.t_start: float | None = None
        self.t_end: float | None = None
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.start:
            self.t_start = time.perf_counter()
        self.t_end = time.perf_counter()
        self.steps = state.global_step

    def rate(self) -> float:
        return (self.steps - self.start) / (self.t_end - self.t_start)


def _spread(values: list[float]) -> dict[str, float]:
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "rel_spread": (max(values) - min(values)) / med if med else float("nan"),
        "values": values,
    }


def _quiet(trainer):
    """No log printing to the console (the logs themselves are still computed every `logging_steps`)."""
    trainer.remove_callback(PrinterCallback)
    return trainer


def _recipe(config: Path, output_dir: str, **overrides: Any) -> Recipe:
    base = {
        "output_dir": output_dir,
        "training.disable_tqdm": True,
        "training.report_to": "none",
        "training.save_strategy": "no",
        "training.eval_strategy": "no",
    }
    return load_recipe(config, {**base, **overrides})


# ---- the hand-written baseline ----------------------------------------------------------------------------------
@dataclass
class HandRun:
    model: torch.nn.Module
    losses: list[torch.Tensor]
    setup_s: float
    loop_s: float
    steady_steps_per_s: float


class HandLoop:
    """A plain PyTorch loop that does the work of `AnchoredTrainer` on the default recipe, and nothing else.

    Mirrors the Trainer's choices so both compute the same thing (the loss curves are compared in the JSON): model
    built after ``set_seed(seed)``; indices ``randint`` from a generator seeded with ``seed`` over the sampler's whole
    epoch; labels ``bernoulli`` from a generator seeded per (seed, step) as the trainer does; lr ``base · s(step)/base``
    (what ``LambdaLR`` computes); fused AdamW (Trainer's ``adamw_torch_fused``, weight decay 0); gradient clipping at
    ``max_grad_norm``; ``zero_grad`` after the step. A labelled term is skipped when no sample carries its label
    (its value and gradient are exactly 0 then). Written as one would by hand, efficiently: data and labels are
    tensors indexed with ``index_select``, concept constants are built once.
    """

    def __init__(self, recipe: Recipe):
        t0 = time.perf_counter()
        tr = recipe.training
        specs = recipe.specs.regularizers
        kinds = sorted(s.loss for s in specs)
        if kinds != ["angular_anchor", "angular_repulsion", "subspace"]:
            raise ValueError(f"the hand loop mirrors the default recipe's three regularizers, got {kinds}")
        by_loss = {s.loss: s for s in specs}
        self.anchor, self.plane, self.sep = by_loss["angular_anchor"], by_loss["subspace"], by_loss["angular_repulsion"]
        self.lr_schedule = recipe.specs.schedules["learning_rate"]
        self.batch, self.base_lr, self.seed = tr["per_device_train_batch_size"], tr["learning_rate"], recipe.seed
        self.max_steps = tr["max_steps"]
        self.max_grad_norm = tr.get("max_grad_norm", 1.0)

        set_seed(self.seed)
        config = model_config(recipe)
        self.model = MODEL_TYPES[recipe.model.get("type", "color_autoencoder")][1](config)
        self.model.train()
        train_ds, _ = build_datasets(recipe)
        cols = train_ds.with_format("torch")[:]
        self.colors = cols["colors"]
        # The trainer draws every label a regularizer uses, in sorted name order, from one generator per step.
        self.probs = {name: cols[f"prob_{name}"] for name in sorted({self.anchor.label, self.plane.label})}
        concepts = ConceptMap.of(config)
        direction = torch.tensor(concepts[self.anchor.concept].direction)
        self.direction = direction / direction.norm()
        axes = concepts[self.plane.concept].axes
        self.outside = torch.tensor([d for d in range(config.bottleneck_dim) if d not in axes])
        self.power = float(self.sep.params.get("power", 100.0))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.base_lr, weight_decay=0.0, fused=True)
        n = len(self.colors)
        self.indices = torch.randint(
            n, (max(n, self.max_steps * self.batch),), generator=torch.Generator().manual_seed(self.seed)
        )
        self.losses: list[torch.Tensor] = []
        self.setup_s = time.perf_counter() - t0

    def step(self, step: int) -> None:
        batch, model = self.batch, self.model
        idx = self.indices[step * batch : (step + 1) * batch]
        x = self.colors.index_select(0, idx)
        # The trainer's label RNG: a pure function of (seed, step) (one process, no accumulation).
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + step) * 4099) % (2**63 - 1))
        labels = {name: torch.bernoulli(p.index_select(0, idx), generator=g) for name, p in self.probs.items()}
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * (self.lr_schedule(step) / self.base_lr)

        out = model(colors=x, labels=x)
        z = out.latents  # (B, K)
        loss = out.loss
        w, count = self.anchor.weight(step), float(labels[self.anchor.label].sum())
        if w and count:
            cos = (z @ self.direction) / z.norm(dim=-1).clamp_min(1e-8)
            loss = loss + w * (((1.0 - cos) * labels[self.anchor.label]).sum() / count)
        w, count = self.plane.weight(step), float(labels[self.plane.label].sum())
        if w and count:
            loss = loss + w * (
                (z.index_select(1, self.outside).square().sum(-1) * labels[self.plane.label]).sum() / count
            )
        w = self.sep.weight(step)
        if w:
            u = F.normalize(z, dim=-1, eps=1e-8)
            sim = ((1.0 + u @ u.T) / 2.0).clamp(0.0, 1.0).pow(self.power)  # (B, B)
            distinct = (z.unsqueeze(0) != z.unsqueeze(1)).any(-1)
            loss = loss + w * ((sim * distinct).sum(-1).sum() / batch)
        loss.backward()
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        model.zero_grad()
        self.losses.append(loss.detach())


def hand_loop(recipe: Recipe, steps: int | None = None, warmup: int = 0) -> HandRun:
    """Set up a :class:`HandLoop` and run it for ``steps`` (default: the recipe's ``max_steps``)."""
    loop = HandLoop(recipe)
    steps = loop.max_steps if steps is None else steps
    t1 = time.perf_counter()
    t_warm = t1
    for step in range(steps):
        if step == warmup:
            t_warm = time.perf_counter()
        loop.step(step)
    t2 = time.perf_counter()
    return HandRun(
        loop.model,
        loop.losses,
        setup_s=loop.setup_s,
        loop_s=t2 - t1,
        steady_steps_per_s=(steps - warmup) / (t2 - t_warm),
    )


class _Interleaved(TrainerCallback):
    """Runs one hand-loop step after every Trainer step and times both, so that machine noise hits them alike.

    Trainer time is measured from the end of one hand step to the next ``on_step_end`` (a whole Trainer step: data,
    labels, schedules, forward/backward, clipping, optimizer, logging); hand time is the hand step itself.
    """

    def __init__(self, loop: HandLoop, warmup: int):
        self.loop, self.warmup = loop, warmup
        self.trainer_s = self.hand_s = 0.0
        self.timed_steps = 0
        self._resumed: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        t0 = time.perf_counter()
        timed = state.global_step > self.warmup and self._resumed is not None
        if timed:
            self.trainer_s += t0 - self._resumed
        self.loop.step(state.global_step - 1)
        t1 = time.perf_counter()
        if timed:
            self.hand_s += t1 - t0
            self.timed_steps += 1
        self._resumed = time.perf_counter()


def _trainer_run(recipe: Recipe, warmup: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    clock = _StepClock(warmup)
    trainer = _quiet(build_trainer(recipe, callbacks=[clock]))
    t1 = time.perf_counter()
    trainer.train()
    t2 = time.perf_counter()
    return {
        "trainer": trainer,
        "build_s": t1 - t0,
        "train_s": t2 - t1,
        "steady_steps_per_s": clock.rate(),
        "steps": trainer.state.global_step,
    }


def _compare_curves(trainer, losses: list[torch.Tensor], model: torch.nn.Module) -> dict[str, float]:
    """Trainer's logged window-mean losses vs the hand loop's per-step losses averaged over the same windows."""
    rows = [r for r in trainer.state.log_history if "loss" in r and "step" in r]
    rel, prev = [], 0
    per_step = torch.stack(losses)
    for row in rows:
        window = float(per_step[prev : row["step"]].mean())
        rel.append(abs(row["loss"] - window) / abs(window))
        prev = row["step"]
    params = max((a - b).abs().max().item() for a, b in zip(trainer.model.parameters(), model.parameters()))
    return {
        "loss_rel_diff_max": max(rel),
        "loss_rel_diff_first_10pct_max": max(rel[: max(1, len(rel) // 10)]),
        "final_param_abs_diff_max": params,
        "windows_compared": len(rel),
    }


# ---- section: throughput ----------------------------------------------------------------------------------------
def bench_throughput(args: argparse.Namespace) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="bench_tp_")
    overrides = {} if args.steps is None else {"training.max_steps": args.steps}
    recipe = _recipe(args.config, tmp, **overrides)
    steps = recipe.training["max_steps"]
    warmup = min(50, steps // 5)
    inter, whole, curves = [], [], None
    for r in range(args.repeats):
        # 1. Step-level interleaving: one hand step after every Trainer step, in the same run.
        clock = _Interleaved(HandLoop(recipe), warmup)
        trainer = _quiet(build_trainer(recipe, callbacks=[clock]))
        trainer.train()
        row = {
            "trainer_steps_per_s": clock.timed_steps / clock.trainer_s,
            "hand_steps_per_s": clock.timed_steps / clock.hand_s,
        }
        row["ratio"] = row["trainer_steps_per_s"] / row["hand_steps_per_s"]
        inter.append(row)
        if curves is None:
            curves = _compare_curves(trainer, clock.loop.losses, clock.loop.model)
        del trainer, clock
        # 2. Whole runs, alternating which goes first: wall time of a full Trainer run and of a full hand loop.
        result: dict[str, Any] = {}
        for side in ("trainer", "hand") if r % 2 == 0 else ("hand", "trainer"):
            result[side] = _trainer_run(recipe, warmup) if side == "trainer" else hand_loop(recipe, warmup=warmup)
        t, h = result["trainer"], result["hand"]
        whole.append(
            {
                "trainer_train_s": t["train_s"],
                "trainer_build_s": t["build_s"],
                "hand_loop_s": h.loop_s,
                "hand_setup_s": h.setup_s,
                "ratio": (steps / t["train_s"]) / (steps / h.loop_s),
            }
        )
        logger.info(
            f"  repeat {r}: interleaved trainer {row['trainer_steps_per_s']:.0f} steps/s, hand "
            f"{row['hand_steps_per_s']:.0f} steps/s, ratio {row['ratio']:.3f}; whole runs: trainer "
            f"{t['train_s']:.2f} s, hand {h.loop_s:.2f} s, ratio {whole[-1]['ratio']:.3f}"
        )
    out = {
        "recipe": str(args.config),
        "steps": steps,
        "batch_size": recipe.training["per_device_train_batch_size"],
        "repeats": args.repeats,
        "warmup_steps_excluded": warmup,
        "trainer_steps_per_s": _spread([x["trainer_steps_per_s"] for x in inter]),
        "hand_loop_steps_per_s": _spread([x["hand_steps_per_s"] for x in inter]),
        "ratio": _spread([x["ratio"] for x in inter]),
        "ratio_target": RATIO_TARGET,
        "ratio_whole_runs": _spread([x["ratio"] for x in whole]),
        "trainer_full_run_train_s": _spread([x["trainer_train_s"] for x in whole]),
        "trainer_full_run_build_s": _spread([x["trainer_build_s"] for x in whole]),
        "hand_loop_full_run_s": _spread([x["hand_loop_s"] for x in whole]),
        "same_work_check": curves,
        "method": (
            "ratio = Trainer steps/s / hand-loop steps/s with one hand step run after every Trainer step (a "
            "callback) in the same process, timed separately, so load changes hit both alike; the first "
            f"{warmup} steps are excluded. The callback's own dispatch (a few microseconds per step) counts "
            "against the Trainer; console printing of the logs (PrinterCallback) is off, the logs themselves "
            "are still computed every logging_steps. Both sides use the recipe as it is (max_grad_norm 1.0 "
            "clipping included) with torch threads as in environment.torch_threads. Whole runs alternate order per repeat; train() wall time excludes building "
            "the model, data and Trainer (build_s)."
        ),
    }
    out["meets_target"] = out["ratio"]["median"] >= RATIO_TARGET
    return out


# ---- section: StructuredGPT vs GPT2LMHeadModel ------------------------------------------------------------------
GPT_RATIO_TARGET = 0.9  # issue 8: StructuredGPT with anchoring >= 0.9x GPT2LMHeadModel's tokens/s
GPT_SIZES: dict[str, dict[str, int]] = {
    # vocab, context, width, layers, heads, batch ("tiny": smoke tests only)
    "tiny": {"vocab_size": 256, "block_size": 16, "hidden_size": 16, "num_layers": 2, "num_heads": 2, "batch": 4},
    "small": {"vocab_size": 2048, "block_size": 64, "hidden_size": 64, "num_layers": 2, "num_heads": 2, "batch": 16},
    "base": {"vocab_size": 4096, "block_size": 128, "hidden_size": 128, "num_layers": 4, "num_heads": 4, "batch": 16},
}
GPT_SITE = "layers.1.residual_post"
GPT_REGULARIZERS = [
    {"name": "anchor-violence", "loss": "angular_anchor", "concept": "violence", "label": "violence", "weight": 0.1},
    {
        "name": "clear-violence-axis",
        "loss": "anti_subspace",
        "concept": "violence-axis",
        "label": "not:violence",
        "weight": 0.1,
    },
]
# The routed variant adds one gradient route (structured_hf/training/routing.py) on the same site: what it costs
# per step is the one masked detach-and-add per routed forward pass.
GPT_ROUTES = [{"name": "route-violence", "concept": "violence-axis", "label": "violence"}]
# The isolated variant: the anchored one plus full-depth isolation of the violence axis as the M4 isolated recipe
# sets it (16 dedicated neurons per block, the KL clear on ordinary chunks, a tenth of them run the full way).
GPT_ISOLATION = {
    "concept": "violence-axis",
    "label": "violence",
    "hidden_units": 16,
    "threshold": 0.5,
    "ordinary": "deleted",
    "full_share": 0.1,
    "clear": 1.0,
    "clear_on": "predictions",
}


def gpt_concepts(width: int, site: str = GPT_SITE) -> list[dict[str, Any]]:
    """A direction concept on axis 0 of a residual site and that axis as an axes concept (anchor + keep clear)."""
    return [
        {"name": "violence", "site": site, "direction": [1.0] + [0.0] * (width - 1)},
        {"name": "violence-axis", "site": site, "axes": [0]},
    ]


def lm_blocks(num_blocks: int, block_size: int, vocab_size: int, seed: int = 0):
    """A synthetic tokenized LM dataset shaped like `tokenize_blocks` output: Zipf-distributed token ids (no network,
    no tokenizer training), full blocks, and a ``prob_violence`` weak-label column with mean 0.3."""
    import datasets
    import numpy as np

    rng = np.random.default_rng(seed)
    freq = 1.0 / np.arange(1, vocab_size + 1) ** 1.1
    ids = rng.choice(vocab_size, (num_blocks, block_size), p=freq / freq.sum()).astype(np.int32)
    return datasets.Dataset.from_dict(
        {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids, dtype=np.int8),
            "labels": ids,
            "prob_violence": rng.uniform(0.0, 0.6, num_blocks).astype(np.float32),
        }
    )


def _gpt2_collator(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full blocks: input_ids and labels only (GPT-2 shifts the labels itself), as LMBlockCollator gives ours."""
    return {"input_ids": batch["input_ids"].long(), "labels": batch["labels"].long()}


def build_gpt_trainer(
    variant: str,
    size: dict[str, int],
    steps: int,
    output_dir: str,
    train_dataset=None,
    callbacks: list | None = None,
    **training: Any,
):
    """One side of the GPT comparison, built directly (no recipe file), all with the same Trainer settings.

    ``variant``: ``anchored`` (StructuredGPT, AnchoredTrainer, :data:`GPT_REGULARIZERS` with weak labels drawn per
    step), ``routed`` (``anchored`` plus :data:`GPT_ROUTES`), ``isolated`` (``anchored`` under IsolatedTrainer with
    :data:`GPT_ISOLATION`), ``plain`` (StructuredGPT, AnchoredTrainer, no
    regularizer) or ``gpt2`` (transformers' GPT2LMHeadModel with the same weights, plain ``transformers.Trainer``).
    """
    from transformers import Trainer, TrainingArguments

    if train_dataset is None:
        train_dataset = lm_blocks(max(256, steps * size["batch"]), size["block_size"], size["vocab_size"])
    common = {
        "output_dir": output_dir,
        "max_steps": steps,
        "per_device_train_batch_size": size["batch"],
        "learning_rate": 3.0e-4,
        "weight_decay": 0.0,
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 0,
        "data_seed": 0,
        "remove_unused_columns": False,
        "use_cpu": True,
        **training,
    }
    set_seed(0)
    config = StructuredGPTConfig(
        vocab_size=size["vocab_size"],
        max_position_embeddings=size["block_size"],
        hidden_size=size["hidden_size"],
        num_layers=size["num_layers"],
        num_heads=size["num_heads"],
        concepts=gpt_concepts(size["hidden_size"]),
    )
    model = StructuredGPTForCausalLM(config)
    if variant == "gpt2":
        trainer = Trainer(
            model=to_gpt2(model),
            args=TrainingArguments(**common),
            train_dataset=ColumnarDataset(train_dataset),
            data_collator=_gpt2_collator,
            callbacks=callbacks,
        )
        # Trainer would pass num_items_in_batch = the count of labels before GPT-2 shifts them (B·T, not B·(T−1)),
        # scaling GPT-2's loss by (T−1)/T. Without it GPT-2 takes the mean over predicted tokens, as StructuredGPT.
        trainer.model_accepts_loss_kwargs = False
        return _quiet(trainer)
    anchored = variant in ("anchored", "routed", "isolated")
    args = AnchoredTrainingArguments(
        **common, regularizers=GPT_REGULARIZERS if anchored else [], routes=GPT_ROUTES if variant == "routed" else []
    )
    kind, extra = (IsolatedTrainer, {"isolation": GPT_ISOLATION}) if variant == "isolated" else (AnchoredTrainer, {})
    return _quiet(
        kind(
            model=model,
            args=args,
            train_dataset=train_dataset,
            data_collator=LMBlockCollator(["violence"] if anchored else []),
            callbacks=callbacks,
            **extra,
        )
    )


GPT_OURS = ("anchored", "routed", "plain")  # the StructuredGPT variants, each reported as a ratio over GPT-2
GPT_VARIANTS = (*GPT_OURS, "gpt2")


def _gpt_sizes(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in (args.gpt_sizes or ("small" if args.quick else "small,base")).split(",") if n.strip()]
    unknown = [n for n in names if n not in GPT_SIZES]
    if unknown:
        raise SystemExit(f"unknown --gpt_sizes {unknown}; known: {list(GPT_SIZES)}")
    return names


def _rotating_rounds(
    names: tuple[str, ...],
    build: Callable[[str, _StepClock], Any],
    repeats: int,
    warmup: int,
    label: str,
    scale: float = 1.0,
    unit: str = "steps/s",
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Short whole runs of every named side per round, the order rotating every round so load changes hit all of
    them; returns each side's steady-state rate per round (steps/s times ``scale``) and its logged losses of round 0
    (the same-work checks compare them)."""
    rates: dict[str, list[float]] = {n: [] for n in names}
    logs: dict[str, list[float]] = {}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            clock = _StepClock(warmup)
            trainer = build(name, clock)
            trainer.train()
            rates[name].append(clock.rate() * scale)
            if r == 0:
                logs[name] = [row["loss"] for row in trainer.state.log_history if "loss" in row]
            del trainer
        logger.info(f"{label} repeat {r}: " + ", ".join(f"{n} {rates[n][-1]:.2f} {unit}" for n in names))
    return rates, logs


def bench_gpt_throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Training tokens/s of StructuredGPT (anchored and plain) vs GPT2LMHeadModel, same size, Trainer settings, data.

    Short whole runs of the three variants alternate, the order rotating every repeat, so load changes hit all of
    them; the ratio is taken per repeat (paired) and its median reported.
    """
    steps = args.gpt_steps or (12 if args.quick else 30)
    warmup = max(2, steps // 6)
    sizes = _gpt_sizes(args)
    out: dict[str, Any] = {}
    for size_name in sizes:
        size = GPT_SIZES[size_name]
        data = lm_blocks(max(256, steps * size["batch"]), size["block_size"], size["vocab_size"])
        tokens_per_step = size["batch"] * size["block_size"]

        def build(variant: str, clock: _StepClock):
            return build_gpt_trainer(
                variant, size, steps, tempfile.mkdtemp(prefix="bench_gpt_"), data, callbacks=[clock]
            )

        rates, logs = _rotating_rounds(
            GPT_VARIANTS, build, args.repeats, warmup, f"  {size_name}", scale=tokens_per_step, unit="tok/s"
        )
        ratios = {v: [a / b for a, b in zip(rates[v], rates["gpt2"])] for v in GPT_OURS}
        out[size_name] = {
            "size": size,
            "tokens_per_step": tokens_per_step,
            "steps": steps,
            "warmup_steps_excluded": warmup,
            "tokens_per_s": {v: _spread(rates[v]) for v in GPT_VARIANTS},
            **{f"ratio_{v}_over_gpt2": _spread(ratios[v]) for v in GPT_OURS},
            "meets_target": statistics.median(ratios["anchored"]) >= GPT_RATIO_TARGET,
            # Same weights, data and optimizer: the plain StructuredGPT and GPT-2 must log the same loss curve.
            "same_work_check": {
                "logged_loss": logs,
                "plain_vs_gpt2_rel_diff_max": max(abs(a - b) / abs(b) for a, b in zip(logs["plain"], logs["gpt2"])),
            },
        }
    out["ratio_target"] = GPT_RATIO_TARGET
    out["method"] = (
        "tokens/s = batch x block tokens per optimizer step / steady-state step time (first steps excluded), CPU, "
        "torch threads as in environment.torch_threads. anchored: StructuredGPTForCausalLM under AnchoredTrainer "
        f"with {[r['loss'] for r in GPT_REGULARIZERS]} on '{GPT_SITE}' and Bernoulli weak labels drawn per step "
        "from the prob_violence column (LMBlockCollator); routed: anchored plus the gradient route "
        f"{GPT_ROUTES}; plain: the same without regularizers; gpt2: transformers' "
        "GPT2LMHeadModel (gelu_new, no dropout, tied embeddings) with the same initial weights under "
        "transformers.Trainer. Same TrainingArguments (fused AdamW, lr 3e-4, no weight decay, clipping 1.0, logging "
        "every 10 steps) and the same synthetic Zipf-token blocks (prob_violence mean 0.3)."
    )
    return out


# ---- section: isolation_kl --------------------------------------------------------------------------------------
def bench_isolation_kl(args: argparse.Namespace) -> dict[str, Any]:
    """Step time of IsolatedTrainer with ``clear_on: predictions`` when the KL's deleted-model logits are the
    ordinary part's own pass, kept, against running the deleted model again (what it did before): short whole runs
    of both, alternating which goes first, the ratio taken per repeat. Same weights, data and labels on both sides,
    so the logged loss curves must agree bit for bit (``same_work_check``)."""
    steps = args.gpt_steps or (12 if args.quick else 30)
    warmup = max(2, steps // 6)
    out: dict[str, Any] = {}
    for size_name in _gpt_sizes(args):
        size = GPT_SIZES[size_name]
        data = lm_blocks(max(256, steps * size["batch"]), size["block_size"], size["vocab_size"])

        def build(side: str, clock: _StepClock):
            trainer = build_gpt_trainer(
                "isolated", size, steps, tempfile.mkdtemp(prefix="bench_iso_"), data, callbacks=[clock]
            )
            trainer._reuse_deleted_logits = side == "reused"
            return trainer

        rates, logs = _rotating_rounds(("reused", "run_again"), build, args.repeats, warmup, f"  {size_name}")
        speedup = [a / b for a, b in zip(rates["reused"], rates["run_again"])]
        out[size_name] = {
            "size": size,
            "steps": steps,
            "warmup_steps_excluded": warmup,
            "steps_per_s": {k: _spread(v) for k, v in rates.items()},
            "speedup_reused_over_run_again": _spread(speedup),
            "same_work_check": {"logged_loss": logs, "identical": logs["reused"] == logs["run_again"]},
        }
    out["method"] = (
        "steps/s of IsolatedTrainer (StructuredGPT, the anchored regularizers of gpt_throughput, isolation "
        f"{GPT_ISOLATION}) on the synthetic Zipf-token blocks, steady state (first steps excluded); 'reused' keeps "
        "the deleted-model logits of the ordinary part's own training pass for the KL, 'run_again' runs the deleted "
        "model on the ordinary rows once more without gradient."
    )
    return out


# ---- section: scaling -------------------------------------------------------------------------------------------
class PeakTensorMemory(TorchDispatchMode):
    """Counts the bytes of every live tensor storage created inside the block (plus those passed to `track`)."""

    def __init__(self):
        super().__init__()
        self._live = WeakIdKeyDictionary()
        self.current = 0
        self.peak = 0

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._live:
            return
        nbytes = storage.nbytes()
        self._live[storage] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, nbytes)

    def _release(self, nbytes: int) -> None:
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self.track(item)
        return out


@dataclass
class ScalingCase:
    """One model family in the scaling section.

    ``recipe(batch, width, steps, output_dir)`` returns the recipe to train (or ``trainer(batch, width, steps,
    output_dir, callbacks)`` builds the trainer directly, for models without a recipe file); ``hand(recipe)``
    optionally builds a hand-loop baseline with a ``step(step)`` method (like :class:`HandLoop`), timed interleaved
    with the Trainer.
    """

    name: str
    batches: list[int]
    widths: list[int]
    default_batch: int
    default_width: int
    recipe: Callable[[int, int, int, str], Recipe] | None = None
    hand: Callable[[Recipe], Any] | None = None
    width_name: str = "hidden_dim"
    notes: str = ""
    trainer: Callable[[int, int, int, str, list], Any] | None = None

    def build(self, batch: int, width: int, steps: int, output_dir: str, callbacks: list | None = None):
        if self.trainer is not None:
            return self.trainer(batch, width, steps, output_dir, callbacks or [])
        return _quiet(build_trainer(self.recipe(batch, width, steps, output_dir), callbacks=callbacks or []))


def _color_recipe(config: Path) -> Callable[[int, int, int, str], Recipe]:
    def make(batch: int, width: int, steps: int, output_dir: str) -> Recipe:
        return _recipe(
            config,
            output_dir,
            **{
                "model.hidden_dim": width,
                "training.per_device_train_batch_size": batch,
                "training.max_steps": steps,
                "training.logging_steps": max(steps, 1),
            },
        )

    return make


COLOR_TRANSFORMER_CONFIG = REPO / "configs" / "color_transformer" / "default.yaml"


def _color_transformer_recipe(config: Path) -> Callable[[int, int, int, str], Recipe]:
    def make(batch: int, width: int, steps: int, output_dir: str) -> Recipe:
        site = "layers.1.residual_post"
        concepts = [
            {"name": "red", "site": site, "direction": {"one_hot": 0, "width": width}},
            {"name": "red-axis", "site": site, "axes": [0]},
        ]
        return _recipe(
            config,
            output_dir,
            **{
                "model.hidden_size": width,
                "model.intermediate_size": 4 * width,
                "model.concepts": concepts,
                "training.per_device_train_batch_size": batch,
                "training.max_steps": steps,
                "training.logging_steps": max(steps, 1),
            },
        )

    return make


def _gpt_scaling_trainer(batch: int, width: int, steps: int, output_dir: str, callbacks: list):
    size = {**GPT_SIZES["base"], "hidden_size": width, "batch": batch}
    return build_gpt_trainer("anchored", size, steps, output_dir, callbacks=callbacks, logging_steps=max(steps, 1))


def _measure_point(case: ScalingCase, batch: int, width: int, budget_s: float) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix=f"bench_{case.name}_")
    # Calibrate the number of steps on a short Trainer probe so every point costs about `budget_s`.
    probe_clock = _StepClock(2)
    case.build(batch, width, 6, tmp, [probe_clock]).train()
    per_step = 1.0 / probe_clock.rate()
    steps = int(min(400, max(8, budget_s / per_step)))
    warmup = max(2, steps // 6)
    if case.hand is not None:
        recipe = case.recipe(batch, width, steps, tmp)
        clock = _Interleaved(case.hand(recipe), warmup)
        trainer = _quiet(build_trainer(recipe, callbacks=[clock]))
        trainer.train()
        trainer_ms, hand_ms = 1e3 * clock.trainer_s / clock.timed_steps, 1e3 * clock.hand_s / clock.timed_steps
    else:
        clock = _StepClock(warmup)
        trainer = case.build(batch, width, steps, tmp, [clock])
        trainer.train()
        trainer_ms, hand_ms = 1e3 / clock.rate(), None
    row: dict[str, Any] = {
        "batch": batch,
        case.width_name: width,
        "steps_timed": steps - warmup,
        "trainer_ms_per_step": trainer_ms,
        "num_parameters": sum(p.numel() for p in trainer.model.parameters()),
    }
    if hand_ms is not None:
        row["hand_ms_per_step"] = hand_ms
        row["trainer_over_hand"] = trainer_ms / hand_ms
    # Peak tensor memory over 3 steps, in a separate run (the dispatch mode slows every op down).
    trainer = case.build(batch, width, 3, tmp)
    with PeakTensorMemory() as mem:
        for p in trainer.model.parameters():
            mem.track(p)
        for column in getattr(trainer.train_dataset, "columns", {}).values():
            mem.track(column)
        trainer.train()
    row["peak_tensor_mib"] = mem.peak / 2**20
    return row


def bench_scaling(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for case in SCALING_CASES:
        batches = case.batches[:3] if args.quick else case.batches
        widths = case.widths[:3] if args.quick else case.widths
        budget = 0.3 if args.quick else 1.5
        points: dict[tuple[int, int], dict[str, Any]] = {}
        for batch in batches:
            points[(batch, case.default_width)] = _measure_point(case, batch, case.default_width, budget)
            logger.info(f"  {case.name} batch {batch}: {_fmt_row(points[(batch, case.default_width)])}")
        for width in widths:
            if (case.default_batch, width) not in points:
                points[(case.default_batch, width)] = _measure_point(case, case.default_batch, width, budget)
            logger.info(f"  {case.name} {case.width_name} {width}: {_fmt_row(points[(case.default_batch, width)])}")
        out[case.name] = {
            "vs_batch": [points[(b, case.default_width)] for b in batches],
            "vs_width": [points[(case.default_batch, w)] for w in widths],
            "fixed": {"batch": case.default_batch, case.width_name: case.default_width},
            "notes": case.notes,
        }
    plot = Path(args.output_dir) / "scaling.png"
    _plot_scaling(out, plot)
    out["plot"] = str(plot)
    return out


def _fmt_row(row: dict[str, Any]) -> str:
    hand = f", hand {row['hand_ms_per_step']:.2f} ms" if "hand_ms_per_step" in row else ""
    return f"trainer {row['trainer_ms_per_step']:.2f} ms/step{hand}, peak {row['peak_tensor_mib']:.2f} MiB"


def _plot_scaling(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, ScalarFormatter

    cases = [k for k, v in results.items() if isinstance(v, dict) and "vs_batch" in v]
    fig, axes = plt.subplots(len(cases), 2, figsize=(10, 3.8 * len(cases)), squeeze=False)
    for i, name in enumerate(cases):
        res = results[name]
        width_key = next(k for k in res["fixed"] if k != "batch")
        for j, (key, rows, xlabel) in enumerate(
            (
                ("batch", res["vs_batch"], f"batch size ({width_key} {res['fixed'][width_key]})"),
                (width_key, res["vs_width"], f"{width_key} (batch {res['fixed']['batch']})"),
            )
        ):
            ax = axes[i][j]
            xs = [r[key] for r in rows]
            ax.plot(xs, [r["trainer_ms_per_step"] for r in rows], "o-", label="AnchoredTrainer ms/step")
            if all("hand_ms_per_step" in r for r in rows):
                ax.plot(xs, [r["hand_ms_per_step"] for r in rows], "s--", label="hand loop ms/step")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(xlabel)
            ax.set_ylabel("ms per step")
            ax.grid(True, which="both", alpha=0.3)
            twin = ax.twinx()
            twin.plot(xs, [r["peak_tensor_mib"] for r in rows], "^:", color="tab:red", label="peak tensor MiB")
            twin.set_yscale("log")
            twin.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            twin.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            twin.yaxis.set_minor_formatter(NullFormatter())
            twin.set_ylabel("peak tensor memory (MiB)", color="tab:red")
            lines = ax.get_legend_handles_labels()
            lines2 = twin.get_legend_handles_labels()
            ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
            ax.set_title(f"{name}: cost vs {key}")

    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(
        fig, path, title="Training cost vs batch size and width (CPU; peak = tensor memory, dispatch-mode count)"
    )


# ---- section: intervention overhead ------------------------------------------------------------------------------
def _time_hooks(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], make: Callable[[], Any], blocks: int, per_block: int
) -> tuple[float, float]:
    """Seconds per eval forward without and with the hooks of ``make()``, in alternating blocks (noise hits both)."""
    plain_s = hooked_s = 0.0
    with torch.no_grad():
        model(**inputs)
        for _ in range(blocks):
            t0 = time.perf_counter()
            for _ in range(per_block):
                model(**inputs)
            t1 = time.perf_counter()
            with make():
                t2 = time.perf_counter()
                for _ in range(per_block):
                    model(**inputs)
                t3 = time.perf_counter()
            plain_s += t1 - t0
            hooked_s += t3 - t2
    n = blocks * per_block
    return plain_s / n, hooked_s / n


def bench_interventions(args: argparse.Namespace) -> dict[str, Any]:
    """Eval-mode forward time with intervention hooks vs without (issue 8: <= 1.2x), for the default color model
    and the 'base' StructuredGPT (hooks on its residual site ``layers.1.residual_post``).

    Blocks of plain and hooked forwards alternate (noise hits both); the ratio is per model, batch size and
    intervention. For the 263-parameter color model a forward pass is a few hundred microseconds of per-op dispatch
    at any batch up to thousands, so even a few extra ops show up; the GPT is the size where the comparison means
    what a user would see.
    """

    recipe = _recipe(args.config, tempfile.mkdtemp(prefix="bench_iv_"))
    set_seed(recipe.seed)
    color = MODEL_TYPES[recipe.model.get("type", "color_autoencoder")][1](model_config(recipe)).eval()
    size = GPT_SIZES[_gpt_sizes(args)[-1]]
    gpt = StructuredGPTForCausalLM(
        StructuredGPTConfig(
            vocab_size=size["vocab_size"],
            max_position_embeddings=size["block_size"],
            hidden_size=size["hidden_size"],
            num_layers=size["num_layers"],
            num_heads=size["num_heads"],
            concepts=gpt_concepts(size["hidden_size"]),
        )
    ).eval()
    cases = [
        (
            "color_autoencoder",
            color,
            {
                "suppress:red": lambda: structured_hf.suppress(color, "red"),
                "repel:red": lambda: structured_hf.repel(color, "red"),
                "axes:hue": lambda: structured_hf.suppress_axes(color, "hue"),
            },
            [(b, {"colors": torch.rand(b, 3, generator=torch.Generator().manual_seed(0))}) for b in (1, 64, 4096)],
            (4, 50) if args.quick else (10, 200),
        ),
        (
            "structured_gpt",
            gpt,
            {
                "suppress:violence": lambda: structured_hf.suppress(gpt, "violence"),
                "repel:violence": lambda: structured_hf.repel(gpt, "violence"),
                "axes:violence-axis": lambda: structured_hf.suppress_axes(gpt, "violence-axis"),
            },
            [
                (
                    b,
                    {
                        "input_ids": torch.randint(
                            size["vocab_size"], (b, size["block_size"]), generator=torch.Generator().manual_seed(0)
                        ),
                        "use_cache": False,
                    },
                )
                for b in ((1, 8) if args.quick else (1, 8, 32))
            ],
            (3, 4) if args.quick else (6, 8),
        ),
    ]
    rows = []
    for model_name, model, variants, batches, (blocks, per_block) in cases:
        for batch, inputs in batches:
            for name, make in variants.items():
                n = per_block if batch < 32 or model_name != "structured_gpt" else max(2, per_block // 2)
                plain, hooked = _time_hooks(model, inputs, make, blocks, n)
                rows.append(
                    {
                        "model": model_name,
                        "batch": batch,
                        "intervention": name,
                        "plain_us": 1e6 * plain,
                        "hooked_us": 1e6 * hooked,
                        "ratio": hooked / plain,
                        "forwards_timed": blocks * n,
                    }
                )
                logger.info(
                    f"  {model_name} batch {batch:5d} {name:19s}: plain {rows[-1]['plain_us']:9.1f} us, with "
                    f"hooks {rows[-1]['hooked_us']:9.1f} us, ratio {rows[-1]['ratio']:.2f}"
                )
    return {
        "rows": rows,
        "target_ratio": 1.2,
        "models": {
            "color_autoencoder": "default recipe config, random init (263 parameters)",
            "structured_gpt": f"size {size} (the largest of --gpt_sizes), random init, "
            f"{size['block_size']}-token inputs, no KV cache",
        },
        "method": "alternating blocks of eval forwards (torch.no_grad), plain then hooked, per cell; hooks "
        "entered once per block, so the ratio is the per-forward cost of the hooks",
    }


# ---- registry ---------------------------------------------------------------------------------------------------
@dataclass
class Section:
    run: Callable[[argparse.Namespace], dict[str, Any]] | None
    description: str
    pending: str = ""  # why it cannot run yet (empty: available)


SCALING_CASES: list[ScalingCase] = [
    ScalingCase(
        name="color_autoencoder",
        batches=[16, 64, 256, 1024, 4096],
        widths=[16, 64, 256, 1024, 4096],
        default_batch=64,
        default_width=16,
        recipe=_color_recipe(DEFAULT_CONFIG),
        hand=HandLoop,
        notes="default recipe (3 regularizers, schedules); angular repulsion is O(batch²) in time and memory; with "
        "num_layers=1 the width enters only through the 3->h, h->K, K->h, h->3 layers (about 14·h parameters).",
    ),
    ScalingCase(
        name="color_transformer",
        batches=[32, 128, 512, 2048],
        widths=[16, 32, 64, 128, 256],
        default_batch=128,
        default_width=64,
        recipe=_color_transformer_recipe(COLOR_TRANSFORMER_CONFIG),
        width_name="hidden_size",
        notes="configs/color_transformer/default.yaml (3 layers, 4 heads, MLP 4x width, red anchored at "
        "layers.1.residual_post plus 3 anti-subspace terms); sequences of a few tokens, so the cost is "
        "dominated by the per-token MLP and projections: linear in batch, about quadratic in width once the "
        "matrices are large enough to leave the per-op overhead regime.",
    ),
    ScalingCase(
        name="structured_gpt",
        batches=[4, 8, 16, 32, 64],
        widths=[32, 64, 128, 256],
        default_batch=16,
        default_width=128,
        width_name="hidden_size",
        trainer=_gpt_scaling_trainer,
        notes="the 'base' GPT of gpt_throughput (4 layers, 4 heads, vocab 4096, 128-token blocks) with the anchored "
        "setup (angular anchor + anti-subspace at layers.1.residual_post, weak labels per step); the "
        "vocabulary projection (4096 x width) and attention over 128 positions make up much of the work.",
    ),
]

SECTIONS: dict[str, Section] = {
    "throughput": Section(bench_throughput, "AnchoredTrainer vs hand loop on the default color recipe (target >= 0.8)"),
    "scaling": Section(
        bench_scaling,
        "time/step and peak tensor memory vs batch size and width, color autoencoder, "
        "color transformer, GPT (table + PNG)",
    ),
    "gpt_throughput": Section(
        bench_gpt_throughput,
        "StructuredGPT tokens/s with anchoring (and without) vs "
        "GPT2LMHeadModel of the same size, same Trainer settings and data "
        "(target >= 0.9)",
    ),
    "isolation_kl": Section(
        bench_isolation_kl,
        "IsolatedTrainer with the KL clear: step time with the main pass's logits reused vs the deleted model run again",
    ),
    "intervention_overhead": Section(
        bench_interventions,
        "forward time with intervention hooks vs without (target <= 1.2x), color autoencoder and GPT",
    ),
}


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import accelerate
    import transformers

    return {
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "platform": platform.platform(),
        "device": "cpu",
        "note": "the machine is shared; noise is reported per measurement (min/max/rel_spread over repeats)",
    }


def print_table(results: dict[str, Any]) -> None:
    tp = results["sections"].get("throughput")
    if tp and "ratio" in tp:
        logger.info("\n| measure | median | min | max |")
        logger.info("|---|---|---|---|")
        for key, label in (
            ("trainer_steps_per_s", "AnchoredTrainer steps/s (interleaved)"),
            ("hand_loop_steps_per_s", "hand loop steps/s (interleaved)"),
            ("ratio", "ratio trainer/hand (target >= 0.8)"),
            ("ratio_whole_runs", "ratio, whole runs"),
            ("trainer_full_run_train_s", f"full {tp['steps']}-step Trainer train() s"),
            ("trainer_full_run_build_s", "Trainer build (model, data, Trainer) s"),
            ("hand_loop_full_run_s", f"hand loop, {tp['steps']} steps, s"),
        ):
            s = tp[key]
            logger.info(f"| {label} | {s['median']:.3g} | {s['min']:.3g} | {s['max']:.3g} |")
    sc = results["sections"].get("scaling")
    if sc:
        for name, res in sc.items():
            if not isinstance(res, dict) or "vs_batch" not in res:
                continue
            wkey = next(k for k in res["fixed"] if k != "batch")
            logger.info(f"\n{name}: | batch | {wkey} | trainer ms/step | hand ms/step | peak tensor MiB |")
            logger.info("|---|---|---|---|---|")
            seen = set()
            for row in res["vs_batch"] + res["vs_width"]:
                key = (row["batch"], row[wkey])
                if key in seen:
                    continue
                seen.add(key)
                hand = f"{row['hand_ms_per_step']:.3g}" if "hand_ms_per_step" in row else "-"
                logger.info(
                    f"| {row['batch']} | {row[wkey]} | {row['trainer_ms_per_step']:.3g} | {hand} | {row['peak_tensor_mib']:.3g} |"
                )
    gpt = results["sections"].get("gpt_throughput")
    if gpt and "ratio_target" in gpt:
        logger.info(
            "\n| GPT size | anchored tok/s | routed tok/s | plain tok/s | GPT-2 tok/s | anchored/GPT-2 (target >= 0.9) "
            "| routed/GPT-2 | plain/GPT-2 |"
        )
        logger.info("|---|---|---|---|---|---|---|---|")
        for name, res in gpt.items():
            if not isinstance(res, dict) or "tokens_per_s" not in res:
                continue
            tps, size = res["tokens_per_s"], res["size"]
            label = (
                f"{name}: d={size['hidden_size']} L={size['num_layers']} H={size['num_heads']} "
                f"V={size['vocab_size']} T={size['block_size']} B={size['batch']}"
            )
            spans = " | ".join(
                f"{q['median']:.3f} [{q['min']:.3f}-{q['max']:.3f}]"
                for q in (res[f"ratio_{v}_over_gpt2"] for v in GPT_OURS)
            )
            logger.info(f"| {label} | " + " | ".join(f"{tps[v]['median']:.0f}" for v in GPT_VARIANTS) + f" | {spans} |")
    iv = results["sections"].get("intervention_overhead")
    if iv and "rows" in iv:
        logger.info("\n| model | batch | intervention | plain us/forward | with hooks | ratio (target <= 1.2) |")
        logger.info("|---|---|---|---|---|---|")
        for row in iv["rows"]:
            logger.info(
                f"| {row.get('model', '')} | {row['batch']} | {row['intervention']} | {row['plain_us']:.1f} | "
                f"{row['hooked_us']:.1f} | {row['ratio']:.2f} |"
            )
    pending = [f"{k}: {v['pending']}" for k, v in results["sections"].items() if isinstance(v, dict) and "pending" in v]
    if pending:
        logger.info("\npending: " + "; ".join(pending))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {list(SECTIONS)}")
    p.add_argument(
        "--output_dir",
        default=str(REPO / "outputs" / "benchmark"),
        help="folder for benchmark.json and scaling.png (default: outputs/benchmark)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="color-autoencoder recipe for the throughput, scaling and intervention sections",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="repeats: interleaved trainer/hand-loop pairs (throughput), rounds of the three GPT runs (gpt_throughput)",
    )
    p.add_argument("--steps", type=int, default=None, help="steps per throughput run (default: the recipe's max_steps)")
    p.add_argument(
        "--gpt_steps",
        type=int,
        default=None,
        help="optimizer steps per gpt_throughput run (default 30, 12 with --quick)",
    )
    p.add_argument(
        "--gpt_sizes",
        default=None,
        help=f"comma-separated GPT sizes for gpt_throughput (the largest also for intervention_overhead), "
        f"of {list(GPT_SIZES)} (default small,base; small with --quick)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads for every side (default 1)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: fewer, shorter scaling points, the small GPT only, fewer timed forwards",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; known: {list(SECTIONS)}")
    results: dict[str, Any] = {"environment": environment(args), "sections": {}}
    for name in wanted:
        section = SECTIONS[name]
        if section.pending or section.run is None:
            results["sections"][name] = {"description": section.description, "pending": section.pending}
            continue
        logger.info(f"[{name}] {section.description}")
        start = time.perf_counter()
        results["sections"][name] = {
            "description": section.description,
            **section.run(args),
            "section_wall_s": time.perf_counter() - start,
        }
    results["environment"]["load_avg_end"] = os.getloadavg()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(results, indent=2, default=_json_default))
    print_table(results)
    logger.info(f"\nwrote {out / 'benchmark.json'}")
    return results


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)
