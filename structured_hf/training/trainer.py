"""`AnchoredTrainer`: `transformers.Trainer` that adds anchoring regularizers to the model's own loss.

It changes *what* is computed (`compute_loss` adds every weighted term, logs each one by name with label counts,
and stops on a non-finite term); callbacks decide *when* (schedules). Everything else (checkpoints and
`resume_from_checkpoint`, evaluation, `report_to`, multi-process runs under accelerate) is Trainer's own.

Loss normalisation. Every term is a sum over the samples of a micro-batch divided by a count taken over the whole
gradient-accumulation window and all processes: the number of samples for plain terms, the sum of labels for
selective ones. Gradient accumulation then adds up exactly the full-batch loss, so 4 micro-batches of 16 give the
update of one batch of 64 (`loss_is_scaled_for_ga = True`: Trainer must not divide again). Under DDP gradients are
averaged over processes, so the loss is multiplied by the number of processes to undo that average.
Terms that couple batch members (repulsion) see their own micro-batch only: their pairs cannot span micro-batches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer

from ..concepts import ConceptMap, ConceptSpec
from ..data.collators import ColumnarDataset, WeakLabelCollator, draw_labels
from ..data.curriculum import Curriculum, CurriculumSampler
from ..data.samplers import EpochWeightedSampler
from ..errors import NonFiniteLossError, StructuredConfigError
from ..losses import LOSSES, selective_mean
from ..sites import capture_modules, resolve_sites, site_dims
from .arguments import AnchoredTrainingArguments, RegularizerSpec
from .callbacks import ScheduleCallback
from ..schedules import Schedule

_SAMPLES = "__samples__"


@dataclass(frozen=True)
class _BoundRegularizer:
    """A regularizer spec resolved against the model: its concept object, site and loss function."""

    spec: RegularizerSpec
    concept: ConceptSpec | None
    site: str

    def per_sample(self, rows: torch.Tensor) -> torch.Tensor:
        return LOSSES[self.spec.loss].fn(rows, self.concept, **self.spec.params)


class AnchoredTrainer(Trainer):
    """Trainer for concept-anchored models.

    Args:
        model: a structured_hf model with named sites and `config.concepts`.
        args: :class:`AnchoredTrainingArguments` with the regularizers and schedules.
        train_dataset / eval_dataset: `datasets.Dataset`s with ``prob_<label>`` columns (wrapped into tensor-backed
            :class:`ColumnarDataset`s) or any torch datasets yielding what the collators expect.
        data_collator: training collator; default draws fresh Bernoulli labels for every label a regularizer uses.
        eval_data_collator: evaluation collator; default passes label columns through as exact/soft weights.
        curriculum: which colors may be drawn at each step (phases / vibrancy floor); needs ``max_steps``.
        **kwargs: passed to `transformers.Trainer`.
    """

    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: torch.nn.Module,
        args: AnchoredTrainingArguments,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        data_collator: Any = None,
        eval_data_collator: Any = None,
        curriculum: Curriculum | None = None,
        **kwargs: Any,
    ):
        if not isinstance(args, AnchoredTrainingArguments):
            raise StructuredConfigError("args", f"expected AnchoredTrainingArguments, got {type(args).__name__}")
        self.curriculum = curriculum
        if curriculum is not None and args.max_steps <= 0:
            raise StructuredConfigError("training.max_steps", "a curriculum is laid out over steps; set max_steps")
        train_dataset = _columnar(train_dataset)
        eval_dataset = _columnar(eval_dataset)
        self.bound_regularizers = _bind_regularizers(model, args.regularizer_specs, train_dataset)
        label_names = sorted({r.spec.label for r in self.bound_regularizers if r.spec.label})
        if data_collator is None:
            # Probabilities pass through the collator; the trainer draws the labels (see `_label_generator`).
            data_collator = WeakLabelCollator(label_names, sample=False)
        self.eval_data_collator = eval_data_collator or WeakLabelCollator(label_names, sample=False)
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         data_collator=data_collator, **kwargs)
        self._site_modules = resolve_sites(model, sorted({r.site for r in self.bound_regularizers}))
        # Current hyperparameter values, written by the schedule callback at every step start.
        self.hparams: dict[str, float] = {}
        schedules = {r.spec.name: r.spec.weight for r in self.bound_regularizers}
        schedules["reconstruction"] = args.parameter_schedules.get("reconstruction", Schedule.constant(1.0))
        self.schedule_callback = ScheduleCallback(schedules, self.hparams, args.reactive_rules)
        self.add_callback(self.schedule_callback)
        self._window: dict[str, float] | None = None
        self._term_sums: dict[str, torch.Tensor] = {}
        self._label_sums: dict[str, torch.Tensor] = {}
        self._last_log_step = 0

    # ---- data -------------------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        weights = getattr(dataset, "sample_weights", None)
        if self.curriculum is not None:
            return CurriculumSampler(
                dataset.columns["colors"].numpy(), self.curriculum,
                samples_per_step=self._train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size,
                num_steps=self.args.max_steps, weights=None if weights is None else weights.numpy(), seed=self.args.seed,
            )
        if self.args.sample_with_replacement or weights is not None:
            # Sampling with replacement has no natural epoch; one "epoch" is as many draws as a full run needs, so
            # Trainer does not rebuild the dataloader every few steps.
            n = len(dataset)
            per_epoch = n
            if self.args.max_steps > 0:
                per_epoch = max(n, self.args.max_steps * self._train_batch_size
                                * self.args.gradient_accumulation_steps * self.args.world_size)
            return EpochWeightedSampler(weights, n, per_epoch, seed=self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def _get_dataloader(self, dataset, description, batch_size, sampler_fn=None, is_training=False,
                        dataloader_key=None):
        if is_training:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        finally:
            self.data_collator = train_collator

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        for k, batch in enumerate(batch_samples):
            if "concept_labels" in batch:
                batch["concept_labels"] = draw_labels(batch["concept_labels"], self._label_generator(k))
        self._window = self._window_totals(batch_samples, device)
        return batch_samples, num_items_in_batch

    def _label_generator(self, micro_batch: int) -> torch.Generator:
        """RNG for the weak labels of one micro-batch, a pure function of (seed, step, micro-batch, process).

        Labels are not drawn from torch's global RNG: Trainer collates the first batch after a resume *before* it
        restores the global RNG state, and accelerate prefetches batches, so global-RNG draws would shift by one
        batch on resume. Seeding from the step makes resumed and uninterrupted runs draw identical labels.
        """
        key = (self.args.seed * 1_000_003 + self.state.global_step) * 4099 + micro_batch * 257 + self.args.process_index
        return torch.Generator().manual_seed(key % (2**63 - 1))

    def _window_totals(self, batches: list[Mapping[str, Any]], device: torch.device) -> dict[str, float]:
        """Samples and label sums over the accumulation window, summed over processes."""
        names = [_SAMPLES] + sorted(self._label_names())
        counts = torch.zeros(len(names), dtype=torch.float64)
        for batch in batches:
            counts += torch.tensor([_batch_size(batch)] + [float(batch["concept_labels"][n].sum()) for n in names[1:]],
                                   dtype=torch.float64)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts.to(device), reduction="sum").cpu()
        return dict(zip(names, counts.tolist()))

    def _label_names(self) -> set[str]:
        return {r.spec.label for r in self.bound_regularizers if r.spec.label}

    # ---- loss ---------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        concept_labels: dict[str, torch.Tensor] = inputs.pop("concept_labels", None) or {}
        with capture_modules(self._site_modules) as acts:
            outputs = model(**inputs)
        if outputs.get("loss") is None:
            raise StructuredConfigError("inputs", "the model returned no loss; batches must contain `labels`")
        n_local = _batch_size(inputs)
        training = model.training and self._window is not None
        if training:
            totals = self._window
        else:
            totals = {_SAMPLES: float(n_local), **{k: float(v.sum()) for k, v in concept_labels.items()}}

        # The model's own loss is a mean over its micro-batch; rescale it to a share of the window mean.
        terms: dict[str, torch.Tensor] = {"reconstruction": outputs["loss"] * (n_local / totals[_SAMPLES])}
        total = self.hparams.get("reconstruction", 1.0) * terms["reconstruction"]
        for reg in self.bound_regularizers:
            weight = self.hparams.get(reg.spec.name, 0.0)
            if weight == 0.0:
                continue  # RESEARCH §3: a weight of 0 skips the term (and its cost)
            x = acts[reg.site]
            rows = x.reshape(-1, x.shape[-1])  # (B·T, D): token positions count as samples of their sequence
            per_row = rows.shape[0] // n_local
            per_sample = reg.per_sample(rows)
            if reg.spec.label:
                labels = concept_labels[reg.spec.label]
                if per_row > 1:
                    labels = labels.repeat_interleave(per_row)
                denom = totals[reg.spec.label] * per_row
            else:
                labels, denom = None, totals[_SAMPLES] * per_row
            terms[reg.spec.name] = selective_mean(per_sample, labels, denominator=denom)
            total = total + weight * terms[reg.spec.name]

        if self.args.check_finite:
            self._check_finite(terms)
        if model.training:
            self._accumulate(terms, concept_labels)
            # DDP averages gradients over processes; our terms are already global means.
            total = total * self.accelerator.num_processes
        return (total, outputs) if return_outputs else total

    def _check_finite(self, terms: Mapping[str, torch.Tensor]) -> None:
        stacked = torch.stack([t.detach().float() for t in terms.values()])
        if bool(torch.isfinite(stacked).all()):
            return
        for name, value in terms.items():
            if not math.isfinite(float(value.detach())):
                raise NonFiniteLossError(name, self.state.global_step, float(value.detach()))

    def _accumulate(self, terms: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            self._term_sums[name] = self._term_sums.get(name, 0.0) + value.detach()
        for name, value in labels.items():
            self._label_sums[name] = self._label_sums.get(name, 0.0) + value.detach().sum()

    # ---- schedules and logging ----------------------------------------------------------------------------------
    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        lr = self.args.parameter_schedules.get("learning_rate")
        if lr is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            base = self.args.learning_rate
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, lambda step: lr(step) / base)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_sums:
            steps = max(self.state.global_step - self._last_log_step, 1)
            names = list(self._term_sums) + [f"labels/{n}" for n in self._label_sums]
            values = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in
                                  list(self._term_sums.values()) + list(self._label_sums.values())])
            if self.accelerator.num_processes > 1:
                values = self.accelerator.reduce(values.to(self.args.device), reduction="sum").cpu()
            for name, value in zip(names, values.tolist()):
                # Terms are per-step means; label counts are totals over the logging interval.
                logs[name if name.startswith("labels/") else f"term/{name}"] = (
                    value if name.startswith("labels/") else value / steps
                )
            for name, value in self.hparams.items():
                logs[f"weight/{name}"] = value
            if self.curriculum is not None:
                step = self.state.global_step - 1  # the step just trained
                if self.curriculum.vibrancy_min is not None:
                    logs["data/vibrancy_min"] = self.curriculum.vibrancy_min(step)
                if self.curriculum.phases:
                    phases = list(self.curriculum.phases)
                    logs["data/phase"] = float(phases.index(self.curriculum.phase_at(step)))
            self._term_sums.clear()
            self._label_sums.clear()
            self._last_log_step = self.state.global_step
        super().log(logs, start_time)


def _batch_size(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    raise StructuredConfigError("batch", "contains no tensor to take a batch size from")


def _columnar(dataset: Any) -> Any:
    return ColumnarDataset(dataset) if isinstance(dataset, datasets.Dataset) else dataset


def _bind_regularizers(model: torch.nn.Module, specs: list[RegularizerSpec], train_dataset: Any) -> list[_BoundRegularizer]:
    """Resolve each spec's concept and site against the model, with errors naming the spec."""
    concepts = ConceptMap.parse(getattr(model.config, "concepts", None)).validate(site_dims(model))
    dims = site_dims(model)
    known_labels = getattr(train_dataset, "label_names", None)
    bound = []
    for i, spec in enumerate(specs):
        field = f"regularizers[{i}] ('{spec.name}')"
        concept = None
        if spec.concept is not None:
            if spec.concept not in concepts:
                raise StructuredConfigError(f"{field}.concept",
                                            f"unknown concept '{spec.concept}'; the model's concept map has {concepts.names}")
            concept = concepts[spec.concept]
            needed = LOSSES[spec.loss].concept_kind
            if concept.kind != needed:
                raise StructuredConfigError(f"{field}.concept",
                                            f"loss '{spec.loss}' needs a concept with {needed}, '{concept.name}' has {concept.kind}")
        site = spec.site or concept.site
        if site not in dims:
            raise StructuredConfigError(f"{field}.site", f"unknown site '{site}'; the model has {sorted(dims)}")
        if concept is not None and spec.site is not None and dims[site] != dims[concept.site]:
            raise StructuredConfigError(f"{field}.site",
                                        f"site '{site}' has width {dims[site]}, concept '{concept.name}' needs {dims[concept.site]}")
        if spec.label is not None and known_labels is not None and spec.label not in known_labels:
            raise StructuredConfigError(f"{field}.label",
                                        f"unknown label '{spec.label}'; the training data has labels {known_labels}")
        bound.append(_BoundRegularizer(spec, concept, site))
    return bound
