"""Non-finite guards of :class:`~structured_hf.training.AnchoredTrainer`: no NaN or inf ever reaches the weights or
the disk.

- a non-finite loss term stops training before the optimizer step (`_check_finite`, from `compute_loss`);
- a non-finite gradient norm (a finite loss can still overflow its gradient) stops training before the optimizer
  step, naming the term whose own gradient overflowed (`_get_grad_norm`);
- every save checks the parameters first and writes nothing if one is NaN/inf (`save_model`);
- every checkpoint gets its completion marker after all its other files (`_save_checkpoint`, run_folder.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch

from ..errors import NonFiniteGradientError, NonFiniteLossError, NonFiniteWeightsError
from ..run_folder import write_checkpoint_marker


class FiniteGuardMixin:
    """The guards above, for a Trainer subclass whose `compute_loss` fills ``self._collect_terms`` when it is set."""

    def _check_finite(self, terms: Mapping[str, torch.Tensor], total: torch.Tensor | None = None) -> None:
        # Weights are finite and every term in `total` has a non-zero weight (0 * inf is NaN too), so a non-finite
        # term always makes the total non-finite: one scalar check per step, the per-term search only on failure.
        if total is not None and math.isfinite(total.item()):
            return
        for name, value in terms.items():
            if not math.isfinite(float(value.detach())):
                raise NonFiniteLossError(name, self.state.global_step, float(value.detach()))

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


def check_finite_parameters(model: torch.nn.Module, destination: str) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first parameter or buffer with NaN/inf values."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteWeightsError(destination, name, int((~torch.isfinite(tensor)).sum()))
