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

Speed. For the 263-parameter color model a step is about a millisecond, so per-step bookkeeping counts: in the plain
runtime (see `_is_plain_runtime`) a few Trainer methods are replaced by equivalent lean versions, and terms with no
labelled sample in the window are not computed. None of this changes a number: the default recipe's metrics and
logs are bit-identical (scripts/benchmark.py measures the speed against a hand-written loop).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DistributedType
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer
from transformers.training_args import OptimizerNames
from transformers.utils import is_sagemaker_mp_enabled

from ..concepts import ConceptMap, ConceptSpec
from ..data.collators import ColumnarDataset, WeakLabelCollator, scope_labels
from ..data.curriculum import Curriculum, CurriculumSampler
from ..data.samplers import EpochWeightedSampler
from ..errors import NonFiniteGradientError, NonFiniteLossError, NonFiniteWeightsError, StructuredConfigError
from ..interventions.suppression import concept_axes
from ..losses import LOSSES, check_loss_params, selective_mean
from ..run_folder import write_checkpoint_marker
from ..schedules import Schedule
from ..sites import capture_modules, resolve_sites, site_dims
from .arguments import AnchoredTrainingArguments, RegularizerSpec
from .callbacks import ScheduleCallback
from .routing import bind_routes, gradient_routes
from .speclist import bind_concept, bind_site, check_label, used_labels

_SAMPLES = "__samples__"


@dataclass(frozen=True)
class _BoundRegularizer:
    """A regularizer spec resolved against the model: its concept object, site and loss function."""

    spec: RegularizerSpec
    concept: ConceptSpec | None
    site: str
    readout: Callable[[torch.Tensor], torch.Tensor] | None = None  # losses that read past the site (LossInfo)

    def per_sample(self, rows: torch.Tensor) -> torch.Tensor:
        if self.readout is not None:
            return LOSSES[self.spec.loss].fn(rows, self.concept, readout=self.readout, **self.spec.params)
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
        dims = site_dims(model)
        concepts = ConceptMap.parse(getattr(model.config, "concepts", None)).validate(dims)
        known_labels = getattr(train_dataset, "label_names", None)
        self.bound_regularizers = _bind_regularizers(args.regularizer_specs, concepts, dims, known_labels, model)
        self.bound_routes = bind_routes(args.route_specs, concepts, dims, known_labels)
        label_names = used_labels(args.regularizer_specs, args.route_specs)
        if data_collator is None:
            # Probabilities pass through the collator; the trainer draws the labels (see `_label_generator`).
            data_collator = WeakLabelCollator(label_names, sample=False)
        self.eval_data_collator = eval_data_collator or WeakLabelCollator(label_names, sample=False)
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         data_collator=data_collator, **kwargs)
        self._site_modules = resolve_sites(model, sorted({r.site for r in self.bound_regularizers}))
        self._route_modules = resolve_sites(model, sorted({r.site for r in self.bound_routes}))
        self._route_labels: dict[str, torch.Tensor] | None = None  # this forward pass's labels, while routing
        # Current hyperparameter values, written by the schedule callback at every step start.
        self.hparams: dict[str, float] = {}
        schedules = {r.spec.name: r.spec.weight for r in self.bound_regularizers}
        schedules.update({r.spec.name: r.spec.weight for r in self.bound_routes})
        schedules["reconstruction"] = args.parameter_schedules.get("reconstruction", Schedule.constant(1.0))
        self.schedule_callback = ScheduleCallback(schedules, self.hparams, args.reactive_rules)
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
        self._draw_window_labels(batch_samples)
        for batch in batch_samples:  # token-level labels (data.token_scope): drawn chunk label x the chunk's scope
            scope = batch.pop("token_scope", None)
            if scope is not None and "concept_labels" in batch:
                scope_labels(batch["concept_labels"], scope)
        self._window = self._window_totals(batch_samples, device)
        return batch_samples, num_items_in_batch

    def _label_generator(self) -> torch.Generator:
        """RNG for the weak labels of one optimizer step, a pure function of (seed, step).

        Labels are not drawn from torch's global RNG: Trainer collates the first batch after a resume *before* it
        restores the global RNG state, and accelerate prefetches batches, so global-RNG draws would shift by one
        batch on resume. Seeding from the step makes resumed and uninterrupted runs draw identical labels.
        """
        key = (self.args.seed * 1_000_003 + self.state.global_step) * 4099
        return torch.Generator().manual_seed(key % (2**63 - 1))

    def _draw_window_labels(self, batches: list[dict[str, Any]]) -> None:
        """Replace the label probabilities of every micro-batch of the window by fresh Bernoulli labels.

        The draws are made for the positions of the samples in the step's *global* batch, so that one process with
        batch 64, two processes with batch 32 and one process accumulating 4 x 16 give every sample the same label.
        Accelerate deals the micro-batches of ``b`` samples round-robin over the ``P`` processes, so micro-batch
        ``k`` of process ``p`` holds positions ``(k·P + p)·b`` onwards. One generator per step draws, label after
        label (sorted by name), one uniform per position of the whole window (``torch.bernoulli`` consumes exactly one
        per element, whatever its probability); every process draws all ``b·K·P`` positions, with the other
        processes' probabilities at 0, so that its generator is at the same place for the next label, and keeps its
        own slices. Labels are drawn on the CPU, with a CPU generator, and moved to the batch's device.
        """
        labelled = [(k, b["concept_labels"]) for k, b in enumerate(batches) if "concept_labels" in b]
        if not labelled:
            return
        generator = self._label_generator()
        world = self.accelerator.num_processes
        if world == 1 and len(batches) == 1:  # one process, no accumulation: the positions are the batch itself
            labels = labelled[0][1]
            for name in sorted(labels):  # the collator's order: sorted label names
                p = labels[name]
                labels[name] = (torch.bernoulli(p, generator=generator) if p.device.type == "cpu"
                                else torch.bernoulli(p.cpu(), generator=generator).to(p.device))
            return
        rank, size = self.accelerator.process_index, self._train_batch_size
        offsets = [(k * world + rank) * size for k, _ in labelled]
        for name in sorted(labelled[0][1]):
            probs = [labels[name] for _, labels in labelled]
            length = max([size * len(batches) * world] + [o + p.shape[0] for o, p in zip(offsets, probs)])
            padded = torch.zeros(length, dtype=probs[0].dtype)
            for offset, p in zip(offsets, probs):
                padded[offset:offset + p.shape[0]] = p.cpu()
            drawn = torch.bernoulli(padded, generator=generator)
            for offset, p, (_, labels) in zip(offsets, probs, labelled):
                labels[name] = drawn[offset:offset + p.shape[0]].to(p.device)

    def _window_totals(self, batches: list[Mapping[str, Any]], device: torch.device) -> dict[str, float]:
        """Samples and label sums over the accumulation window, summed over processes.

        Also adds this process's label counts to the logging totals (labels are 0/1, so Python float sums are exact).
        """
        names = [_SAMPLES] + self._label_names()
        counts = [0.0] * len(names)
        for batch in batches:
            counts[0] += _batch_size(batch)
            for i, name in enumerate(names[1:], start=1):
                counts[i] += float(batch["concept_labels"][name].sum())
        for name, count in zip(names[1:], counts[1:]):
            self._label_sums[name] = self._label_sums.get(name, 0.0) + count
        if self.accelerator.num_processes > 1:
            reduced = self.accelerator.reduce(torch.tensor(counts, dtype=torch.float64, device=device), reduction="sum")
            counts = reduced.cpu().tolist()
        return dict(zip(names, counts))

    def _label_names(self) -> list[str]:
        return self._label_list

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
        n_local = _batch_size(inputs)
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
                raise StructuredConfigError(f"regularizers.{reg.spec.name}", "token-level labels (data.token_scope) "
                                            "need a per-token site and all positions")
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

    def _check_finite(self, terms: Mapping[str, torch.Tensor], total: torch.Tensor | None = None) -> None:
        # Weights are finite and every term in `total` has a non-zero weight (0 * inf is NaN too), so a non-finite
        # term always makes the total non-finite: one scalar check per step, the per-term search only on failure.
        if total is not None and math.isfinite(total.item()):
            return
        for name, value in terms.items():
            if not math.isfinite(float(value.detach())):
                raise NonFiniteLossError(name, self.state.global_step, float(value.detach()))

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
        with capture_modules(self._site_modules) as acts, \
                gradient_routes(self._route_modules, self.bound_routes, lambda: (self._route_labels, self.hparams)):
            self._run_acts = acts
            try:
                return super().train(*args, **kwargs)
            finally:
                self._run_acts = None

    # ---- per-step overhead -------------------------------------------------------------------------------------
    # For a 263-parameter model the step itself takes about a millisecond, so Trainer's per-step bookkeeping matters.
    # The overrides below do the same work as Trainer's own methods in the plain runtime (one process or DDP, no
    # DeepSpeed/FSDP/SageMaker/XLA/context parallelism, no fp16 gradient scaler, no LOMO): they skip per-step
    # re-checks of that configuration, a walk over all modules, and accelerate's generic dispatch. Anything else
    # goes through Trainer unchanged.
    def _is_plain_runtime(self) -> bool:
        if self._plain_runtime is None:
            acc = self.accelerator
            parallelism = getattr(acc, "parallelism_config", None)
            self._plain_runtime = (
                acc.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
                and getattr(acc, "scaler", None) is None
                and not is_sagemaker_mp_enabled()
                and not self.is_deepspeed_enabled
                and not self.is_fsdp_enabled
                and not getattr(self, "is_distributed_loading_by_transformers", False)
                and (parallelism is None or not getattr(parallelism, "cp_enabled", False))
                and self.args.optim not in (OptimizerNames.LOMO, OptimizerNames.ADALOMO)
                and self.args.n_gpu <= 1
                and self.args.torch_empty_cache_steps is None
            )
        return self._plain_runtime

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Trainer's `training_step` for the plain runtime: forward, our (already GA-scaled) loss, backward."""
        if not self._is_plain_runtime():
            return super().training_step(model, inputs, num_items_in_batch)
        if not model.training:  # Trainer calls model.train() on every step: a walk over all modules
            model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):  # schedule-free optimizers
            self.optimizer.train()
        if inputs and self.args.device.type == "cpu" and _all_on_cpu(inputs):
            inputs = dict(inputs)  # what `_prepare_inputs` returns on a CPU run: a copy, every `.to("cpu")` a no-op
        else:
            inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        del inputs
        # loss_is_scaled_for_ga: compute_loss normalises by the window totals, so no division here. Trainer gives
        # accelerate 1 accumulation step, so its backward() would divide by 1 (an op and a backward node): skip it.
        if self.accelerator.gradient_accumulation_steps == 1:
            loss.backward()
        else:
            self.accelerator.backward(loss)
        return loss.detach()

    def _clip_grad_norm(self, model):
        """In the plain runtime accelerate's `clip_grad_norm_` ends in exactly this call (no DTensor, no scaler)."""
        if not self._is_plain_runtime():
            return super()._clip_grad_norm(model)
        if self._clip_params is None:
            params = list(model.parameters())
            if any(type(p.grad).__name__ == "DTensor" or type(p.data).__name__ == "DTensor" for p in params):
                self._plain_runtime = False
                return super()._clip_grad_norm(model)
            self._clip_params = params
        return torch.nn.utils.clip_grad_norm_(self._clip_params, self.args.max_grad_norm)

    def _unwrap_optimizer(self) -> None:
        """Step the torch optimizer itself rather than accelerate's wrapper, in the plain runtime.

        Trainer creates the scheduler right after `accelerator.prepare`, so this runs at that point. There
        `AcceleratedOptimizer.step` only forwards to the wrapped optimizer (Trainer steps on gradient-sync steps only;
        no scaler, no XLA), but first looks the LOMO package up through the import system, twice per step: about as
        long as the Adam update of a small model. Trainer unwraps the same way for SageMaker fp16.
        """
        optimizer = self.optimizer
        if (isinstance(optimizer, AcceleratedOptimizer) and optimizer.scaler is None and self._is_plain_runtime()
                and not callable(getattr(optimizer.optimizer, "train", None))):
            self.optimizer = optimizer.optimizer

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None and self.args.max_grad_norm <= 0 and self._is_plain_runtime():
            # Trainer measures the norm anyway (clipping at inf); same call as accelerate's, minus the dispatch.
            grad_norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()), float("inf"))
        grad_norm = super()._get_grad_norm(model, grad_norm)
        # Trainer calls this on every optimizer step, right before `optimizer.step()`: a finite loss can still have
        # an overflowing gradient (a huge weight or learning rate), and one such step writes NaN into every weight.
        if self.args.check_finite and not math.isfinite(float(grad_norm)):
            self._raise_non_finite_gradient(float(grad_norm))
        return grad_norm

    def _raise_non_finite_gradient(self, grad_norm: float) -> None:
        """Name the term(s) whose own gradient is non-finite: recompute the last micro-batch's terms and take each
        weighted term's gradient separately (only on failure, so it costs nothing in a healthy run)."""
        norms: dict[str, float] = {}
        blamed: list[str] = []
        inputs = self._last_train_inputs
        if inputs is not None:
            model = self.model
            collected: dict[str, tuple[float, torch.Tensor]] = {}
            self._collect_terms = collected
            try:
                model.zero_grad(set_to_none=True)
                self.compute_loss(model, dict(inputs))
            except NonFiniteLossError:
                pass  # the terms collected so far still say which gradient overflows
            finally:
                self._collect_terms = None
            params = [p for p in model.parameters() if p.requires_grad]
            for name, (weight, value) in collected.items():
                if not value.requires_grad:
                    continue
                grads = torch.autograd.grad(weight * value, params, retain_graph=True, allow_unused=True)
                squares = sum(float(g.double().square().sum()) for g in grads if g is not None)
                norms[name] = math.sqrt(squares) if squares >= 0 else squares  # NaN stays NaN
                if not math.isfinite(norms[name]):
                    blamed.append(name)
        raise NonFiniteGradientError(blamed, self.state.global_step, grad_norm, norms)

    # ---- saving: never non-finite weights, every checkpoint marked complete last -------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's `save_model`, refusing (before any file is written) a model with NaN/inf weights."""
        check_finite_parameters(self.model, output_dir or self.args.output_dir)
        super().save_model(output_dir, _internal_call)

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint, then its marker (``structured_checkpoint.json``), written after every other file:
        a checkpoint without the marker was interrupted while saving and is never resumed from (run_folder.py)."""
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            write_checkpoint_marker(folder, {**self.run_identity, "global_step": self.state.global_step})

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """Trainer's estimate (6 · inputs · parameters), with the parameter count taken once instead of every step."""
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if self._num_params is None:
            self._num_params = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[main_input].numel() * self._num_params

    # ---- schedules and logging ----------------------------------------------------------------------------------
    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if optimizer is None and self.lr_scheduler is None:
            self._unwrap_optimizer()
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
            # The window starts at the last log of this train() call, or where it resumed from a checkpoint.
            since = max(self._last_log_step, getattr(self, "_initial_global_step", 0))
            steps = max(self.state.global_step - since, 1)
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


def _all_on_cpu(batch: Mapping[str, Any]) -> bool:
    """Every tensor of a (nested) dict batch is on the CPU (lists and tuples: not checked, answer False)."""
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            if value.device.type != "cpu":
                return False
        elif isinstance(value, Mapping):
            if not _all_on_cpu(value):
                return False
        elif isinstance(value, (list, tuple)):
            return False
    return True


def _batch_size(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    raise StructuredConfigError("batch", "contains no tensor to take a batch size from")


def check_finite_parameters(model: torch.nn.Module, destination: str) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first parameter or buffer with NaN/inf values."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteWeightsError(destination, name, int((~torch.isfinite(tensor)).sum()))


def _columnar(dataset: Any) -> Any:
    return ColumnarDataset(dataset) if isinstance(dataset, datasets.Dataset) else dataset


def _bind_regularizers(specs: list[RegularizerSpec], concepts: ConceptMap, dims: Mapping[str, int],
                       known_labels: Any, model: torch.nn.Module | None = None) -> list[_BoundRegularizer]:
    """Resolve each spec's concept and site against the model, with errors naming the spec."""
    bound = []
    for i, spec in enumerate(specs):
        field = f"regularizers[{i}] ('{spec.name}')"
        concept = None
        if spec.concept is not None:
            concept = bind_concept(field, spec.concept, concepts)
            needed = LOSSES[spec.loss].concept_kind
            if concept.kind != needed:
                raise StructuredConfigError(f"{field}.concept",
                                            f"loss '{spec.loss}' needs a concept with {needed}, '{concept.name}' has {concept.kind}")
        site = bind_site(field, spec.site, concept, dims)
        check_label(field, spec.label, known_labels)
        _check_params(f"{field}.params", spec.loss, spec.params)
        readout = None
        if LOSSES[spec.loss].needs_readout:
            if model is None or not hasattr(model, "deletion_readout"):
                raise StructuredConfigError(f"{field}.loss", f"loss '{spec.loss}' reads the model past the site; "
                                            f"{type(model).__name__} has no deletion_readout (the color autoencoder "
                                            "has)")
            if not spec.label:
                raise StructuredConfigError(f"{field}.label", f"loss '{spec.loss}' needs a label: it sets what "
                                            "deletion does to the labelled samples, not to all of them")
            readout = model.deletion_readout(site, concept_axes(concept))
        bound.append(_BoundRegularizer(spec, concept, site, readout))
    return bound


def _check_params(field: str, loss: str, params: Mapping[str, Any]) -> None:
    """Parameter names, types and ranges (:func:`~structured_hf.losses.check_loss_params`), checked again at
    construction for specs built in Python rather than loaded from a recipe."""
    check_loss_params(field, loss, params)
