"""The plain-runtime fast path of :class:`~structured_hf.training.AnchoredTrainer`.

For a 263-parameter model the step itself takes about a millisecond, so Trainer's per-step bookkeeping matters.
The overrides below do the same work as Trainer's own methods in the plain runtime (one process or DDP, no
DeepSpeed/FSDP/SageMaker/XLA/context parallelism, no fp16 gradient scaler, no LOMO): they skip per-step
re-checks of that configuration, a walk over all modules, and accelerate's generic dispatch. Anything else
goes through Trainer unchanged.

None of this changes a number: the default recipe's metrics and logs are bit-identical with and without it
(tests/test_reliability.py, tests/test_trainer.py), and ``structured_hf.benchmarks`` measures the speed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DistributedType
from transformers.training_args import OptimizerNames
from transformers.utils import is_sagemaker_mp_enabled


class PlainRuntimeMixin:
    """Lean versions of Trainer's per-step methods, used only in the plain runtime (see `_is_plain_runtime`)."""

    _plain_runtime: bool | None = None
    _clip_params: list[torch.nn.Parameter] | None = None
    _num_params: int | None = None

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
        if (
            isinstance(optimizer, AcceleratedOptimizer)
            and optimizer.scaler is None
            and self._is_plain_runtime()
            and not callable(getattr(optimizer.optimizer, "train", None))
        ):
            self.optimizer = optimizer.optimizer

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """Trainer's estimate (6 · inputs · parameters), with the parameter count taken once instead of every step."""
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if self._num_params is None:
            self._num_params = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[main_input].numel() * self._num_params


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
