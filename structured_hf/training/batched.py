"""Batched seed training: N runs of a color-autoencoder recipe in one process, as one model with N weight sets.

The color autoencoder has a few hundred parameters, so one training step is per-step overhead (Python, dispatch,
Trainer bookkeeping), not arithmetic. Training N seeds one after the other pays that overhead N times; here every
weight tensor gets a leading seed dimension, ``(N, out, in)``, every linear layer is one batched matrix product and
every regularizer one call on ``(N, B, D)`` activations, so a 20-seed step costs about three 1-seed steps (profile:
docs/benchmarks.md).

Each seed keeps everything its single :class:`~structured_hf.training.AnchoredTrainer` run has:

- **initialization**: the model is built with ``set_seed(seed)`` exactly as :func:`build_trainer` builds it, and its
  weights are copied into the seed's slice;
- **data order**: the same sampler (:class:`~structured_hf.data.samplers.EpochWeightedSampler`, seeded by the seed);
- **weak-label draws**: the trainer's per-step generator, a function of (seed, step), in sorted label order;
- **schedule**: every regularizer weight follows the seed's own recipe (variants may differ per seed); the learning
  rate schedule must be the same for the batch (one optimizer steps all seeds; an error says so otherwise);
- gradient clipping per seed (``max_grad_norm`` over that seed's parameters only) and the same AdamW update.

What differs is rounding only: a batched matrix product may sum in another order than the single one, the angular
repulsion computes its power by repeated squaring and leaves out pair terms below 2^-100 (:class:`_PairPower`: on a
CPU, subnormal floats made ``pow(x, 100)`` a quarter of a 20-seed step), and training amplifies 1-ulp differences
over 1500 steps. tests/test_batched_sweep.py checks a seed against its single run over the first 40 steps (weights
within 1e-5), and docs/colors.md compares 20-seed score distributions of both.

Recipes that need more than this (curricula, gradient routing, reactive rules, gradient accumulation, other model
families) raise :class:`~structured_hf.errors.StructuredConfigError` naming the field: run them with
``--sequential``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.profiler import record_function
from transformers import set_seed

from ..concepts import ConceptMap, ConceptSpec
from ..data.colors import resolve_colors
from ..data.collators import ColumnarDataset, label_probabilities
from ..data.samplers import EpochWeightedSampler
from ..errors import NonFiniteLossError, StructuredConfigError
from ..registry import FAMILIES, get_family
from ..losses import LOSSES
from ..losses.regularizers import UNCHANGED
from ..models.color_autoencoder.modeling_color_autoencoder import DeletionReadout, pruned_readout, rewritten_readout
from ..schedules import Schedule
from .arguments import RegularizerSpec
from .binding import bind_readout, check_concept_kind
from .recipe import MODEL_TYPES, Recipe, build_datasets, model_config, model_type


# Families whose models this module can batch (model.type values). A family joins by giving a batched forward.
def batched_families() -> list[str]:
    """The families that registered ``batched_seeds=True`` (structured_hf.registry)."""
    return sorted(name for name, family in FAMILIES.items() if family.batched_seeds)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
}
_SITES = ("encoder", "bottleneck")
# The TrainingArguments this loop honours; any other field set in a recipe's `training:` is either logging/saving
# (ignored: nothing is written per step) or refused below.
_IGNORED_TRAINING = {
    "per_device_eval_batch_size",
    "logging_nan_inf_filter",
    "save_strategy",
    "eval_strategy",
    "dataloader_num_workers",
    "disable_tqdm",
    "report_to",
    "logging_first_step",
    "save_steps",
    "eval_steps",
    "save_total_limit",
    "dataloader_pin_memory",
}
_USED_TRAINING = {
    "max_steps",
    "per_device_train_batch_size",
    "learning_rate",
    "weight_decay",
    "sample_with_replacement",
    "max_grad_norm",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "check_finite",
    "optim",
    "logging_steps",
}


# ---- the batched model --------------------------------------------------------------------------------------------
class BatchedColorAutoencoder:
    """N color autoencoders of one architecture as stacked tensors (``(N, ...)`` per parameter).

    Every parameter ``(N, *shape)`` is a leaf tensor over columns of one ``(N, P)`` buffer, :attr:`flat` (row ``i``:
    seed ``i``'s P weights), and its gradient a view of the same columns of :attr:`flat_grad`. Why: the optimizer
    steps one tensor instead of one per parameter (AdamW is elementwise, so the update is the same), and clipping each
    seed's gradient norm is one norm over rows and one product (instead of about 20 small operations per step).

    Args:
        models: N :class:`~structured_hf.models.color_autoencoder.ColorAutoencoderModel` of the same config; their
            weights are copied (the models are not changed until :meth:`write_back`).
    """

    def __init__(self, models: Sequence[torch.nn.Module]):
        if not models:
            raise StructuredConfigError("seeds", "expected at least one seed, got none")
        self.config = models[0].config
        self.names = [name for name, _ in models[0].named_parameters()]
        self.n = len(models)
        stacked = {
            name: torch.stack([dict(m.named_parameters())[name].detach() for m in models]) for name in self.names
        }
        self.flat = torch.cat([t.flatten(1) for t in stacked.values()], dim=1)  # (N, P), a copy
        self.flat_grad = torch.zeros_like(self.flat)
        self.flat.grad = self.flat_grad
        self.params: dict[str, torch.Tensor] = {}
        offset = 0
        for name, t in stacked.items():
            columns = slice(offset, offset + t[0].numel())
            # A leaf over the buffer's memory, and a gradient that backward adds into in place.
            self.params[name] = self.flat[:, columns].view(t.shape).detach().requires_grad_(True)
            self.params[name].grad = self.flat_grad[:, columns].view(t.shape)
            offset += t[0].numel()
        self.act = _ACTIVATIONS[self.config.activation]

    def _linear(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        # (N, B, in) @ (N, in, out) + (N, 1, out): one batched product for all seeds.
        w, b = self.params[f"{prefix}.weight"], self.params[f"{prefix}.bias"]
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))

    def encode(self, colors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, B, 3)`` -> (``encoder`` site, ``bottleneck`` site), each ``(N, B, K)``."""
        x = colors
        for i in range(self.config.num_layers):
            x = self.act(self._linear(x, f"encoder.mlp.layers.{i}"))
        z = self._linear(x, "encoder.proj")
        latents = F.normalize(z, dim=-1) if self.config.normalize_bottleneck else z
        return z, latents

    def decode(self, latents: torch.Tensor, training: bool = True) -> torch.Tensor:
        """``(N, B, K)`` -> ``(N, B, 3)`` through the configured output head (linear while training for ``clamp``)."""
        x = self.act(self._linear(latents, "decoder.proj"))
        for i in range(self.config.num_layers - 1):
            x = self.act(self._linear(x, f"decoder.mlp.layers.{i}"))
        out = self._linear(x, "decoder.out")
        if self.config.output_head == "sigmoid":
            return torch.sigmoid(out)
        return out if training else out.clamp(0.0, 1.0)

    def deletion_readout(self, site: str, axes: tuple[int, ...]) -> DeletionReadout:
        """The batched counterpart of the model's ``deletion_readout``: decode with ``axes`` zeroed (and the rest
        renormalized on a normalized bottleneck); ``.intact`` decodes without deletion."""
        return pruned_readout(self.decode, self.config.normalize_bottleneck, tuple(axes))

    def intervened_readout(self, site: str, rewrite: Callable[[torch.Tensor], torch.Tensor]) -> DeletionReadout:
        """The batched counterpart of the model's ``intervened_readout``: decode ``rewrite(x)`` (renormalized only
        after the ``encoder`` site, as the forward pass does); ``rewrite`` acts on the last dimension of
        ``(N, B, K)``."""
        return rewritten_readout(self.decode, self.config.normalize_bottleneck, site, rewrite)

    def write_back(self, models: Sequence[torch.nn.Module]) -> None:
        """Copy seed ``i``'s weights into ``models[i]``."""
        with torch.no_grad():
            for i, model in enumerate(models):
                params = dict(model.named_parameters())
                for name in self.names:
                    params[name].copy_(self.params[name][i])


# ---- the plan: what each seed trains ------------------------------------------------------------------------------
@dataclass
class _Term:
    """One regularizer, shared by all seeds (same loss, concept, site, label); its weight schedule is per seed."""

    spec: RegularizerSpec
    concept: ConceptSpec | None
    site: str
    schedules: list[Schedule]


def check_batchable(recipes: Sequence[Recipe]) -> None:
    """Raise a clear error unless these recipes can train as one batch (same family, architecture, data, terms)."""
    if len(recipes) == 0:
        raise StructuredConfigError("seeds", "a batched sweep needs at least one seed (N >= 1), got 0")
    first = recipes[0]
    kind = model_type(first)
    if not get_family(kind).batched_seeds:
        raise StructuredConfigError(
            "model.type",
            f"batched seed training supports {batched_families()}, not {kind!r}; run this sweep with --sequential",
        )
    for key, why in (("routes", "gradient routing"), ("reactive", "reactive rules")):
        if getattr(first, key):
            raise StructuredConfigError(key, f"batched seed training does not implement {why}; use --sequential")
    if first.data.get("curriculum") is not None:
        raise StructuredConfigError(
            "data.curriculum", "batched seed training does not implement curricula; use --sequential"
        )
    for key, value in first.training.items():
        if key not in _USED_TRAINING | _IGNORED_TRAINING:
            raise StructuredConfigError(
                f"training.{key}", "batched seed training does not implement this field; use --sequential"
            )
        if key == "optim" and value not in ("adamw_torch", "adamw_torch_fused"):
            raise StructuredConfigError(
                "training.optim", f"batched seed training uses AdamW, got {value!r}; use --sequential"
            )
    if first.training.get("max_steps", -1) <= 0:
        raise StructuredConfigError("training.max_steps", "batched seed training needs max_steps > 0")
    shared = ("model", "data")
    for i, r in enumerate(recipes[1:], start=1):
        for key in shared:
            if getattr(r, key) != getattr(first, key):
                raise StructuredConfigError(
                    f"{key} (run {i})",
                    "every run of a batch must share the model and the data; this one differs from the first",
                )
        if {k: v for k, v in r.training.items() if k not in _IGNORED_TRAINING} != {
            k: v for k, v in first.training.items() if k not in _IGNORED_TRAINING
        }:
            raise StructuredConfigError(f"training (run {i})", "every run of a batch must share the training fields")
        if r.schedules.get("learning_rate") != first.schedules.get("learning_rate"):
            raise StructuredConfigError(
                f"schedules.learning_rate (run {i})",
                "one optimizer steps every seed: the learning-rate schedule must be the same for the whole batch",
            )
        a = [{k: v for k, v in spec.items() if k != "weight"} for spec in r.regularizers]
        b = [{k: v for k, v in spec.items() if k != "weight"} for spec in first.regularizers]
        if a != b:
            raise StructuredConfigError(
                f"regularizers (run {i})", "every run of a batch must have the same regularizers (weights may differ)"
            )


def _terms(recipes: Sequence[Recipe], concepts: ConceptMap) -> list[_Term]:
    per_recipe = [r.specs.regularizers for r in recipes]
    terms = []
    for k, spec in enumerate(per_recipe[0]):
        field = f"regularizers[{k}] ('{spec.name}')"
        if spec.positions is not None:
            raise StructuredConfigError(f"{field}.positions", "token positions do not apply to the color autoencoder")
        concept = concepts[spec.concept] if spec.concept is not None else None
        if concept is not None:
            check_concept_kind(field, spec, concept)
        site = spec.site or (concept.site if concept is not None else "bottleneck")
        if site not in _SITES:
            raise StructuredConfigError(f"{field}.site", f"expected one of {list(_SITES)}, got {site!r}")
        target = spec.params.get("target")
        if LOSSES[spec.loss].needs_readout and target is not None and target != UNCHANGED:
            resolve_colors([target], f"{field}.params.target")
        terms.append(_Term(spec, concept, site, [specs[k].weight for specs in per_recipe]))
    return terms


# ---- training -----------------------------------------------------------------------------------------------------
def train_batched(
    recipes: Sequence[Recipe], progress: Callable[[int, int], None] | None = None
) -> tuple[list[torch.nn.Module], dict[str, Any]]:
    """Train every recipe (one per seed) as one batch; returns (models in eval mode, timing info).

    The recipes must satisfy :func:`check_batchable` (typically one recipe with different ``seed``s; per-seed
    regularizer weights are allowed). Each model is what :func:`~structured_hf.training.build_trainer` + ``train()``
    would give for its recipe, up to the rounding of batched matrix products (see the module docstring).
    """
    check_batchable(recipes)
    start = time.perf_counter()
    first = recipes[0]
    config = model_config(first)
    _, model_cls = MODEL_TYPES[model_type(first)]
    models = []
    for r in recipes:
        set_seed(r.seed)  # what build_trainer does before it builds the model: the single run's initial weights
        models.append(model_cls(model_config(r)))
    train_ds, _ = build_datasets(first)
    data = ColumnarDataset(train_ds)
    batched = BatchedColorAutoencoder(models)
    n = batched.n
    concepts = ConceptMap.of(config)
    terms = _terms(recipes, concepts)
    labels = sorted({t.spec.label for t in terms if t.spec.label})
    terms_by_name = {t.spec.name: t for t in terms}
    for t in terms:
        if t.spec.label and t.spec.label not in data.label_names:
            raise StructuredConfigError(
                f"regularizers.{t.spec.name}.label",
                f"unknown label '{t.spec.label}'; data.labels has {sorted(data.label_names)}",
            )
    readouts = {}
    for t in terms:
        if LOSSES[t.spec.loss].needs_readout:
            readouts[t.spec.name] = bind_readout(batched, LOSSES[t.spec.loss].readout, t.site, t.concept)
    per_row = {name for name in readouts if not LOSSES[terms_by_name[name].spec.loss].batch_coupled}
    training = first.training
    steps = int(training["max_steps"])
    batch = int(training.get("per_device_train_batch_size", 8))
    base_lr = float(training.get("learning_rate", 5e-5))
    lr_schedule = first.specs.schedules.get("learning_rate")
    recon_schedules = [r.specs.schedules.get("reconstruction", Schedule.constant(1.0)) for r in recipes]
    max_norm = float(training.get("max_grad_norm", 1.0))
    check_finite = bool(training.get("check_finite", True))

    # Data order: each seed's sampler, as the Trainer would build it (one "epoch" holds every step's draws).
    weights = data.sample_weights
    if not (training.get("sample_with_replacement", False) or weights is not None):
        raise StructuredConfigError(
            "training.sample_with_replacement",
            "batched seed training samples with replacement (the M2 recipes do); set it to true or use --sequential",
        )
    per_epoch = max(len(data), steps * batch)
    order = torch.stack(
        [EpochWeightedSampler(weights, len(data), per_epoch, seed=r.seed).indices() for r in recipes]
    )  # (N, per_epoch)
    colors_all = data.columns["colors"].float()
    probs_all = label_probabilities(data.columns, labels)
    probs_table = torch.stack([probs_all[name] for name in labels]) if labels else torch.empty(0)  # (L, items)

    optimizer = torch.optim.AdamW(
        [batched.flat],
        lr=base_lr,
        betas=(float(training.get("adam_beta1", 0.9)), float(training.get("adam_beta2", 0.999))),
        eps=float(training.get("adam_epsilon", 1e-8)),
        weight_decay=float(training.get("weight_decay", 0.0)),
        fused=training.get("optim", "adamw_torch_fused") == "adamw_torch_fused",
    )
    seeds = [r.seed for r in recipes]
    weights_at = {t.spec.name: _schedule_table(t.schedules, steps) for t in terms}  # (steps, N) each
    recon_at = _schedule_table(recon_schedules, steps)
    # Per-seed logs like the Trainer's (`loss` and `term/<name>`, means over each logging window), for loss curves and
    # the stability metrics of a sweep summary.
    logging_steps = int(training.get("logging_steps", 500))
    histories: list[list[dict[str, float]]] = [[] for _ in range(n)]
    term_names = [t.spec.name for t in terms]
    log_names = ["loss", "term/reconstruction"] + [f"term/{name}" for name in term_names]
    zeros = torch.zeros(n)
    window_sum: torch.Tensor | None = None
    window_steps = 0
    weights_py = {name: table.tolist() for name, table in weights_at.items()}
    label_index = {name: k for k, name in enumerate(labels)}
    generator, uniforms = torch.Generator(), torch.empty(n, len(labels), batch)  # reused by every step's draws
    # One marker per run (no per-step cost): profiles (structured_hf/benchmarks/batched.py) tell setup from steps.
    with record_function("batched training loop"):
        for step in range(steps):
            idx = order[:, step * batch : (step + 1) * batch]  # (N, B)
            colors = colors_all[idx]  # (N, B, 3)
            drawn = _draw_labels(probs_table, idx, seeds, step, generator, uniforms) if labels else None  # (L, N, B)
            counts = drawn.sum(-1) if labels else None  # (L, N): labelled samples per label and seed
            counts_py = counts.tolist() if labels else []
            lr = base_lr * (lr_schedule(step) / base_lr) if lr_schedule is not None else base_lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            z, latents = batched.encode(colors)
            acts = {"encoder": z, "bottleneck": latents}
            recon = batched.decode(latents)
            recon_loss = (recon - colors).square().mean(dim=(1, 2))  # (N,)
            total = recon_loss * recon_at[step]
            term_values = {}
            for t in terms:
                # Which seeds compute the term this step, decided in Python (no tensor ops for the common cases).
                w_py = weights_py[t.spec.name][step]
                if t.spec.label:
                    k = label_index[t.spec.label]
                    c_py = [batch - c for c in counts_py[k]] if t.spec.negate_label else counts_py[k]
                else:
                    c_py = [batch] * n
                active_py = [w != 0.0 and c > 0 for w, c in zip(w_py, c_py)]
                if not any(active_py):
                    continue  # as in the trainer: a zero weight or no labelled sample skips the term
                w = weights_at[t.spec.name][step]
                if t.spec.label:
                    lab = drawn[label_index[t.spec.label]]
                    count = counts[label_index[t.spec.label]]
                    if t.spec.negate_label:
                        lab, count = 1.0 - lab, batch - count
                    x = acts[t.site]
                    if t.spec.name in per_row and max(c_py) < batch:
                        # A readout term decodes every sample it sees; unlabelled samples count 0, so decode only each
                        # seed's labelled ones (padded to the largest count): the same sum of the same products.
                        rows = lab.argsort(dim=1, descending=True, stable=True)[:, : int(max(c_py))]  # (N, M)
                        x = x.gather(1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
                        lab = lab.gather(1, rows)
                    per_sample = _per_sample(t, x, readouts.get(t.spec.name), idx)  # (N, B) or (N, M)
                    summed = (per_sample * lab).sum(-1)
                else:
                    per_sample = _per_sample(t, acts[t.site], readouts.get(t.spec.name), idx)  # (N, B)
                    summed, count = per_sample.sum(-1), float(batch)
                if all(active_py):  # the common case: no masking ops in the graph
                    value = summed / count
                else:
                    # A skipped seed's value is exactly 0 (the Trainer skips the term) and has no gradient; weights are
                    # finite, so w * 0 adds nothing to its total and no second `where` is needed.
                    count = count.clamp_min(1.0) if torch.is_tensor(count) else count
                    value = torch.where(torch.tensor(active_py), summed / count, 0.0)
                total = total + w * value
                term_values[t.spec.name] = value
            if check_finite and not bool(torch.isfinite(total).all()):
                bad = int((~torch.isfinite(total)).nonzero()[0])
                name = next((k for k, v in term_values.items() if not bool(torch.isfinite(v[bad]))), "reconstruction")
                raise NonFiniteLossError(f"{name} (seed {seeds[bad]})", step, float(total[bad]))
            with torch.no_grad():  # one stacked add per step; terms skipped this step add 0, as in the Trainer's logs
                logged = [total, recon_loss] + [term_values.get(name, zeros) for name in term_names]
                window_sum = torch.stack(logged) if window_sum is None else window_sum + torch.stack(logged)
                window_steps += 1
                if (step + 1) % logging_steps == 0 or step + 1 == steps:
                    _flush_logs(histories, dict(zip(log_names, window_sum)), window_steps, step + 1)
                    window_sum, window_steps = None, 0
            batched.flat_grad.zero_()
            with warnings.catch_warnings():
                # A parameter over columns of the (N, P) buffer is not dense, so torch's "gradient layout contract" (warned
                # about once per process) prefers a contiguous gradient; ours is a strided view on purpose (see the class).
                warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
                total.sum().backward()  # seeds share no parameter: each slice's gradient is its own run's
            if max_norm > 0:
                _clip_per_seed(batched.flat_grad, max_norm)
            optimizer.step()
            if progress is not None:
                progress(step + 1, steps)
    batched.write_back(models)
    for m in models:
        m.eval()
    return models, {
        "train_runtime_s": time.perf_counter() - start,
        "seeds": seeds,
        "steps": steps,
        "log_history": histories,
    }


def _flush_logs(
    histories: list[list[dict[str, float]]], window: Mapping[str, torch.Tensor], steps: int, global_step: int
) -> None:
    """Append each seed's window means (terms skipped on some steps count 0 there, as in the Trainer's logs)."""
    means = {name: (value / steps).tolist() for name, value in window.items()}
    for i, history in enumerate(histories):
        history.append({"step": global_step, **{name: values[i] for name, values in means.items()}})


def _draw_labels(
    probs: torch.Tensor,
    idx: torch.Tensor,
    seeds: Sequence[int],
    step: int,
    generator: torch.Generator,
    uniforms: torch.Tensor,
) -> torch.Tensor:
    """Each seed's Bernoulli labels for this step, drawn as its single run draws them: one generator per (seed, step),
    labels in sorted order, one uniform per batch position. ``probs`` is ``(labels, items)``, ``uniforms`` an
    ``(N, labels, B)`` buffer; returns ``(labels, N, B)``.

    The trainer calls ``torch.bernoulli(p, generator)`` once per label; on the CPU that is ``uniform < p`` with one
    float32 uniform per element, label after label, position after position (tests/test_batched_sweep.py checks the
    equality), so one ``rand`` per seed into a reused buffer and one comparison for the whole batch give the same
    draws with one generator object instead of one per seed and step.
    """
    for i, seed in enumerate(seeds):
        key = (seed * 1_000_003 + step) * 4099  # AnchoredTrainer._label_generator
        generator.manual_seed(key % (2**63 - 1))
        torch.rand(uniforms.shape[1:], generator=generator, out=uniforms[i])
    return (uniforms.transpose(0, 1) < probs[:, idx]).float()


def _schedule_table(schedules: Sequence[Schedule], steps: int) -> torch.Tensor:
    """``(steps, N)``: seed ``i``'s schedule at every step. Seeds of one recipe share their schedules, so each distinct
    schedule (a frozen dataclass) is evaluated once, not once per seed (20 x 11 x 1500 Python calls at N = 20)."""
    curves = {s: [s(step) for step in range(steps)] for s in dict.fromkeys(schedules)}
    return torch.tensor([curves[s] for s in schedules]).T.contiguous()


def _per_sample(term: _Term, x: torch.Tensor, readout: Any, idx: torch.Tensor) -> torch.Tensor:
    """The term's per-sample loss on ``(N, B, D)`` activations -> ``(N, B)`` (``idx``: the batch's color indices)."""
    info = LOSSES[term.spec.loss]
    params = dict(term.spec.params)
    if term.spec.loss == "angular_repulsion":
        return _angular_repulsion(x, idx, **params)
    if info.needs_readout:
        return info.fn(x, term.concept, readout=readout, **params)
    if info.batch_coupled:
        # Pairs within one seed's batch only: the loss is written for (B, D); map it over the seed dimension.
        return torch.vmap(lambda rows: info.fn(rows, term.concept, **params))(x)
    return info.fn(x, term.concept, **params)


def _angular_repulsion(x: torch.Tensor, idx: torch.Tensor, power: float = 100.0) -> torch.Tensor:
    """:func:`~structured_hf.losses.angular_repulsion` on ``(N, B, D)``, the same formula per seed.

    The loss leaves out exact duplicates (``x_j == x_i`` on every coordinate): within one seed's batch those are the
    repeats of one training color (the encoder is deterministic), so they are found by comparing the ``(N, B)``
    color indices instead of ``(N, B, B, D)`` activations.

    For an integer power >= 2 the pair terms go through :class:`_PairPower` (same value and gradient, computed
    without subnormal floats; see there); any other power uses the loss's own ``pow``.
    """
    u = F.normalize(x, dim=-1, eps=1e-8)
    if float(power).is_integer() and power >= 2:
        # float mask: comparisons that return bool tensors are several times slower than float products on CPU
        return _PairPower.apply(u, _distinct_pairs(idx), int(power))
    sim = ((1.0 + u @ u.transpose(1, 2)) / 2.0).clamp(0.0, 1.0).pow(power)  # (N, B, B)
    return (sim * (idx.unsqueeze(1) != idx.unsqueeze(2))).sum(-1)


def _distinct_pairs(idx: torch.Tensor) -> torch.Tensor:
    """``(N, B, B)`` float mask, 1 where batch positions i and j hold different colors (``idx``: ``(N, B)``)."""
    ids = idx.to(torch.float32)  # exact below 2^24 items
    return (ids.unsqueeze(1) - ids.unsqueeze(2)).square_().clamp_(max=1.0)  # integer gaps: 0 or >= 1


# Pair terms below 2^-100 (about 7.9e-31) are left out of the repulsion sum. Why: at p = 100, once the latents have
# spread, 15-30% of a batch's pairs (cosine below about -0.17) have ((1 + cos)/2)^p below float32's smallest normal
# number (2^-126), and x86 CPUs compute on such subnormal floats up to 100x slower: `pow(x, 100)` and its backward were
# about a quarter of a 20-seed step. A dropped pair changes a row's sum by less than 2^-100 and its gradient by less
# than p * 2^-100 / c, which rounds away next to any term of ordinary size (float32 keeps 24 bits).
_PAIR_FLOOR_LOG2 = -100.0


class _PairPower(torch.autograd.Function):
    """``Σ_j distinct_ij * clamp((1 + u_i·u_j)/2, 0, 1)^p`` per row of ``(N, B, D)`` unit vectors ``u``.

    The same value and gradient as the autograd graph of :func:`~structured_hf.losses.angular_repulsion` (clamp,
    pow, mask, sum), computed in one pass each way:

    - pairs whose term is at most ``2^-100`` are zero (see ``_PAIR_FLOOR_LOG2``), so that no subnormal float forms;
    - ``c^(p-1)`` by repeated squaring (a handful of products instead of ``pow``'s exp/log: a few ulps apart, about
      3e-6 relative at p = 100), kept for the backward pass: ``dL/du_i = Σ_j (G_ij + G_ji) u_j`` with
      ``G_ij = g_i p c_ij^(p-1) / 2``, zero where the clamp at 1 is active (as clamp's own gradient is).
    """

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, distinct: torch.Tensor, power: int) -> torch.Tensor:
        half = u.new_full((1, 1, 1), 0.5)
        raw = torch.baddbmm(half, u, u.transpose(1, 2), alpha=0.5)  # (1 + u_i·u_j) / 2, (N, B, B)
        floor = 2.0 ** (_PAIR_FLOOR_LOG2 / power)  # c > floor  <=>  c^p > 2^-100: every c^k, k <= p, is normal
        c = F.threshold(raw, floor, 0.0).clamp_(max=1.0).mul_(distinct)
        below = _int_pow(c, power - 1)  # c^(p-1)
        ctx.save_for_backward(u, below, raw)
        ctx.power = power
        return (below * c).sum(-1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        u, below, raw = ctx.saved_tensors
        g = below.masked_fill(raw > 1.0, 0.0).mul_(grad.unsqueeze(-1) * (ctx.power / 2.0))  # dL/d(u_i·u_j)
        return torch.baddbmm(g @ u, g.transpose(1, 2), u), None, None


def _int_pow(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x^k`` for an integer ``k >= 1`` by repeated squaring (``x^99 = x^64 x^32 x^2 x``)."""
    result: torch.Tensor | None = None
    square = x
    while True:
        if k & 1:
            result = square if result is None else result * square
        k >>= 1
        if not k:
            return result
        square = square * square


@torch.no_grad()
def _clip_per_seed(flat_grad: torch.Tensor, max_norm: float) -> None:
    """``clip_grad_norm_`` applied to each seed's parameters separately: row ``i`` of the ``(N, P)`` gradient buffer
    is seed ``i``'s whole gradient (its norm equals the norm of per-parameter norms, up to rounding)."""
    flat_grad.mul_((max_norm / (flat_grad.norm(dim=1) + 1e-6)).clamp_(max=1.0).unsqueeze(1))


def peak_memory_estimate(n: int, recipe: Recipe) -> int:
    """Bytes held by the stacked parameters, gradients and Adam state of ``n`` seeds (the batch's own tensors)."""
    config = model_config(recipe)
    _, model_cls = MODEL_TYPES[model_type(recipe)]
    count = sum(p.numel() for p in model_cls(config).parameters())
    return int(4 * count * n * 4)  # params, grads, exp_avg, exp_avg_sq in float32


__all__ = ["BatchedColorAutoencoder", "batched_families", "check_batchable", "train_batched"]
