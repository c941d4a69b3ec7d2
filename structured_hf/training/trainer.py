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

Weak labels are drawn per optimizer step from a generator seeded by (seed, step), for each sample's position in the
step's global batch: resumed runs draw the labels of uninterrupted ones, and 2 processes x 32 or 4 x 16 accumulated
draw those of one process with 64 (tests/test_reliability.py checks both loss curves).

The pieces live next to this file: label drawing in `label_draws.py`, regularizer binding in `binding.py`, the
non-finite guards and checkpoint markers in `guards.py`, and the fast path in `fast_path.py`.

Speed. For the 263-parameter color model a step is about a millisecond, so per-step bookkeeping counts: in the plain
runtime (`fast_path.PlainRuntimeMixin`) a few Trainer methods are replaced by equivalent lean versions, and terms with
no labelled sample in the window are not computed. None of this changes a number: the default recipe's metrics and
logs are bit-identical (scripts/benchmark.py measures the speed against a hand-written loop).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer

from ..concepts import ConceptMap
from ..data.collators import ColumnarDataset, WeakLabelCollator, scope_labels
from ..data.curriculum import Curriculum, CurriculumSampler
from ..data.samplers import EpochWeightedSampler
from ..errors import StructuredConfigError
from ..losses import selective_mean
from ..schedules import Schedule
from ..sites import capture_modules, resolve_sites, site_dims
from .arguments import AnchoredTrainingArguments
from .binding import _bind_regularizers
from .callbacks import ScheduleCallback
from .fast_path import PlainRuntimeMixin
from .guards import FiniteGuardMixin, check_finite_parameters  # noqa: F401  (check_finite_parameters: re-export)
from .label_draws import batch_size_of, draw_window_labels, label_generator, window_counts
from .routing import bind_routes, gradient_routes
from .speclist import used_labels

_SAMPLES = "__samples__"


class AnchoredTrainer(FiniteGuardMixin, PlainRuntimeMixin, Trainer):
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
        dims = site_dims(model)
        concepts = ConceptMap.of(model).validate(dims)
        known_labels = getattr(train_dataset, "label_names", None)
        self.bound_regularizers = _bind_regularizers(args.regularizers, concepts, dims, known_labels, model)
        self.bound_routes = bind_routes(args.routes, concepts, dims, known_labels)
        label_names = used_labels(args.regularizers, args.routes)
        if data_collator is None:
            # Probabilities pass through the collator; the trainer draws the labels (see `_label_generator`).
            data_collator = WeakLabelCollator(label_names, sample=False)
        self.eval_data_collator = eval_data_collator or WeakLabelCollator(label_names, sample=False)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=data_collator,
            **kwargs,
        )
        self._site_modules = resolve_sites(model, sorted({r.site for r in self.bound_regularizers}))
        self._route_modules = resolve_sites(model, sorted({r.site for r in self.bound_routes}))
        self._route_labels: dict[str, torch.Tensor] | None = None  # this forward pass's labels, while routing
        # Current hyperparameter values, written by the schedule callback at every step start.
        self.hparams: dict[str, float] = {}
        schedules = {r.spec.name: r.spec.weight for r in self.bound_regularizers}
        schedules.update({r.spec.name: r.spec.weight for r in self.bound_routes})
        schedules["reconstruction"] = args.schedules.get("reconstruction", Schedule.constant(1.0))
        self.schedule_callback = ScheduleCallback(schedules, self.hparams, args.reactive)
        self.add_callback(self.schedule_callback)
        self._window: dict[str, float] | None = None
        self._term_sums: dict[str, torch.Tensor] = {}
        self._label_sums: dict[str, float] = {}
        self._last_log_step = 0
        self._plain_runtime: bool | None = None  # see `_is_plain_runtime`
        self._clip_params: list[torch.nn.Parameter] | None = None
        self._num_params: int | None = None
        self._zeros: dict[tuple, torch.Tensor] = {}
        self._run_acts: dict[str, torch.Tensor] | None = None  # site recorders' output while train() runs
        self._label_list = sorted(label_names)
        # The last training micro-batch (a shallow copy), kept to name the term whose gradient overflowed.
        self._last_train_inputs: dict[str, Any] | None = None
        self._collect_terms: dict[str, tuple[float, torch.Tensor]] | None = None  # set while diagnosing
        # Which run and recipe the checkpoints belong to (set by structured_hf.experiment; see run_folder.py).
        self.run_identity: dict[str, Any] = {}

    # ---- data -------------------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        weights = getattr(dataset, "sample_weights", None)
        if self.curriculum is not None:
            return CurriculumSampler(
                dataset.columns["colors"].numpy(),
                self.curriculum,
                samples_per_step=self._train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size,
                num_steps=self.args.max_steps,
                weights=None if weights is None else weights.numpy(),
                seed=self.args.seed,
            )
        if self.args.sample_with_replacement or weights is not None:
            # Sampling with replacement has no natural epoch; one "epoch" is as many draws as a full run needs, so
            # Trainer does not rebuild the dataloader every few steps.
            n = len(dataset)
            per_epoch = n
            if self.args.max_steps > 0:
                per_epoch = max(
                    n,
                    self.args.max_steps
                    * self._train_batch_size
                    * self.args.gradient_accumulation_steps
                    * self.args.world_size,
                )
            return EpochWeightedSampler(weights, n, per_epoch, seed=self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def _get_dataloader(
        self, dataset, description, batch_size, sampler_fn=None, is_training=False, dataloader_key=None
    ):
        if is_training:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        finally:
            self.data_collator = train_collator

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._draw_window_labels(batch_samples)
        for batch in batch_samples:  # token-level labels (data.token_scope): drawn chunk label x the chunk's scope
            scope = batch.pop("token_scope", None)
            if scope is not None and "concept_labels" in batch:
                scope_labels(batch["concept_labels"], scope)
        self._window = self._window_totals(batch_samples, device)
        return batch_samples, num_items_in_batch

    def _draw_window_labels(self, batches: list[dict[str, Any]]) -> None:
        draw_window_labels(
            batches,
            label_generator(self.args.seed, self.state.global_step),
            self.accelerator.num_processes,
            self.accelerator.process_index,
            self._train_batch_size,
        )

    def _window_totals(self, batches: list[Mapping[str, Any]], device: torch.device) -> dict[str, float]:
        """Samples and label sums over the accumulation window, summed over processes; also adds this process's
        label counts to the logging totals (labels are 0/1, so Python float sums are exact)."""
        names = [_SAMPLES] + self._label_list
        counts = window_counts(batches, self._label_list)
        for name, count in zip(names[1:], counts[1:]):
            self._label_sums[name] = self._label_sums.get(name, 0.0) + count
        if self.accelerator.num_processes > 1:
            reduced = self.accelerator.reduce(torch.tensor(counts, dtype=torch.float64, device=device), reduction="sum")
            counts = reduced.cpu().tolist()
        return dict(zip(names, counts))

    # ---- loss ---------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and self.args.check_finite and self._collect_terms is None:
            self._last_train_inputs = dict(inputs)  # before the pops below; see `_raise_non_finite_gradient`
        concept_labels: dict[str, torch.Tensor] = inputs.pop("concept_labels", None) or {}
        # (B, T) 1 for real tokens, 0 for padding (LMBlockCollator): padded positions stay out of the regularizers.
        token_mask: torch.Tensor | None = inputs.pop("token_mask", None)
        # Outside training the scope is still attached (get_batch_samples applies it to drawn training labels).
        scope_labels(concept_labels, inputs.pop("token_scope", None))
        acts = self._run_acts
        if acts is not None:  # inside train(): the recorders (and the gradient routes) are already attached
            acts.clear()
            self._route_labels = concept_labels if model.training else None
            try:
                outputs = model(**inputs)
            finally:
                self._route_labels = None
        else:
            with capture_modules(self._site_modules) as acts:
                outputs = model(**inputs)
        if outputs.get("loss") is None:
            raise StructuredConfigError("inputs", "the model returned no loss; batches must contain `labels`")
        n_local = batch_size_of(inputs)
        training = model.training and self._window is not None
        if training:
            totals = self._window
        else:
            totals = {_SAMPLES: float(n_local), **{k: float(v.sum()) for k, v in concept_labels.items()}}

        # The model's own loss is a mean over its micro-batch; rescale it to a share of the window mean. Factors of
        # exactly 1 (one process, no accumulation, unit weight) are skipped: x·1 == x, and each product would add a
        # forward op and a backward node per step.
        share = n_local / totals[_SAMPLES]
        terms: dict[str, torch.Tensor] = {"reconstruction": outputs["loss"] if share == 1 else outputs["loss"] * share}
        recon_weight = self.hparams.get("reconstruction", 1.0)
        total = terms["reconstruction"] if recon_weight == 1 else recon_weight * terms["reconstruction"]
        for reg in self.bound_regularizers:
            weight = self.hparams.get(reg.spec.name, 0.0)
            if weight == 0.0:
                continue  # a weight of 0 skips the term (and its cost)
            x = acts[reg.site]
            # Token-level labels ((B, T), data.token_scope) count tokens; chunk labels ((B,)) count samples.
            per_token = bool(reg.spec.label) and concept_labels[reg.spec.label].ndim == 2
            if per_token and (x.ndim != 3 or reg.spec.positions is not None):
                raise StructuredConfigError(
                    f"regularizers.{reg.spec.name}",
                    "token-level labels (data.token_scope) need a per-token site and all positions",
                )
            if reg.spec.label:
                count = totals[reg.spec.label]
                if reg.spec.negate_label:  # the samples (tokens) without the label
                    count = totals[_SAMPLES] * (x.shape[1] if per_token else 1) - count
                if count == 0:
                    # No labelled sample in the whole window: Σ w·ℓ / Σ w is exactly 0 with a zero gradient (the
                    # selective reduction's where()), so skip computing ℓ at all. Most steps of the default recipe
                    # have no red label.
                    terms[reg.spec.name] = self._zero(x)
                    continue
            mask = token_mask if x.ndim == 3 else None
            if reg.spec.positions is not None and x.ndim == 3:
                x = x[:, list(reg.spec.positions)]  # (B, P, D): only the chosen token positions
                mask = None if mask is None else mask[:, list(reg.spec.positions)]
            rows = x.reshape(-1, x.shape[-1])  # (B·T, D): token positions count as samples of their sequence
            per_row = rows.shape[0] // n_local
            if reg.spec.label:
                labels = concept_labels[reg.spec.label]
                if reg.spec.negate_label:
                    labels = 1.0 - labels
                if per_token:
                    labels, denom = labels.reshape(-1), count
                else:
                    if per_row > 1:
                        labels = labels.repeat_interleave(per_row)
                    denom = count * per_row
            else:
                labels, denom = None, totals[_SAMPLES] * per_row
            if mask is not None:
                # Padding contributes nothing; the denominator stays samples x positions, so every labelled block
                # counts as T positions (a short last block of a chunk weighs a little less).
                flat = mask.reshape(-1).to(rows.dtype)
                labels = flat if labels is None else labels * flat
            per_sample = reg.per_sample(rows)
            terms[reg.spec.name] = selective_mean(per_sample, labels, denominator=denom)
            total = total + weight * terms[reg.spec.name]

        if self._collect_terms is not None:
            self._collect_terms["reconstruction"] = (recon_weight, terms["reconstruction"])
            for reg in self.bound_regularizers:
                weight = self.hparams.get(reg.spec.name, 0.0)
                if weight != 0.0 and reg.spec.name in terms:
                    self._collect_terms[reg.spec.name] = (weight, terms[reg.spec.name])
        if self._run_acts is not None:
            self._run_acts.clear()  # the graph keeps what backward needs; do not hold activations until next step
        if self.args.check_finite:
            self._check_finite(terms, total)
        if model.training:
            self._accumulate(terms)
            # DDP averages gradients over processes; our terms are already global means.
            if self.accelerator.num_processes > 1:
                total = total * self.accelerator.num_processes
        return (total, outputs) if return_outputs else total

    def _zero(self, like: torch.Tensor) -> torch.Tensor:
        """A shared 0-dim zero (never written to) for terms skipped for lack of labels."""
        key = (like.dtype, like.device)
        zero = self._zeros.get(key)
        if zero is None:
            zero = self._zeros[key] = torch.zeros((), dtype=like.dtype, device=like.device)
        return zero

    @torch.no_grad()
    def _accumulate(self, terms: Mapping[str, torch.Tensor]) -> None:
        """Running per-term sums for the logs (label counts are added in `_window_totals`)."""
        for name, value in terms.items():
            running = self._term_sums.get(name)
            if running is None:
                self._term_sums[name] = 0.0 + value
            else:
                running.add_(value)

    def train(self, *args: Any, **kwargs: Any):
        """`Trainer.train`, with the regularized sites' recorders attached once for the whole run instead of at every
        forward pass (`sites.capture_modules` removes them in ``finally``, also when training fails)."""
        # Recorders first, routes second: forward hooks run in registration order, so the regularizers read each site
        # before routing rewrites it (the value is the same; only the routed copy's gradient differs).
        with (
            capture_modules(self._site_modules) as acts,
            gradient_routes(self._route_modules, self.bound_routes, lambda: (self._route_labels, self.hparams)),
        ):
            self._run_acts = acts
            try:
                return super().train(*args, **kwargs)
            finally:
                self._run_acts = None

    # ---- schedules and logging ----------------------------------------------------------------------------------
    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if optimizer is None and self.lr_scheduler is None:
            self._unwrap_optimizer()
        lr = self.args.schedules.get("learning_rate")
        if lr is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            base = self.args.learning_rate
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, lambda step: lr(step) / base)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_sums:
            # The window starts at the last log of this train() call, or where it resumed from a checkpoint.
            since = max(self._last_log_step, getattr(self, "_initial_global_step", 0))
            steps = max(self.state.global_step - since, 1)
            names = list(self._term_sums) + [f"labels/{n}" for n in self._label_sums]
            values = torch.stack(
                [
                    torch.as_tensor(v, dtype=torch.float64)
                    for v in list(self._term_sums.values()) + list(self._label_sums.values())
                ]
            )
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


def _columnar(dataset: Any) -> Any:
    return ColumnarDataset(dataset) if isinstance(dataset, datasets.Dataset) else dataset
