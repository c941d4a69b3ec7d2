"""Full-depth isolation: a concept's samples train only its dedicated units; every other sample trains the rest.

Gradient routing (:mod:`.routing`) keeps labelled samples' gradient out of the weights *upstream* of the anchored
site. Everything downstream still learns the concept at full strength, and that is what a fine-tuning attack
reactivates after ``ablate`` (docs/robustness.md). Isolation is selective gradient masking at every depth (as in
SGTM, Shilov et al. 2025): the concept gets dedicated units everywhere (its axes at every depth of its activation
space plus ``hidden_units`` neurons of every hidden layer; see :mod:`structured_hf.interventions.isolation`), and

- a **concept sample** (drawn label 1, or label probability >= ``threshold``) runs the full model, but its gradient
  reaches only the dedicated entries: every shared parameter (tied embeddings, norms and head included) gets exactly 0
  from it;
- an **ordinary sample** runs the model with the dedicated entries zeroed (``ordinary: deleted``, the default; the
  shared weights learn to work without the concept's units, i.e. exactly as the deleted model will run) or with them
  in place but frozen (``ordinary: full``); either way its task gradient on every dedicated entry is exactly 0.
  ``full_share`` (with ``deleted``) runs that share of the ordinary samples, drawn per micro-batch, the ``full``
  way instead: the shared weights then also learn to work with the units in place, a dropout of the dedicated
  units that trades the undeleted model's damage against what deleting them costs.
  With ``clear > 0`` ordinary samples also run the full model once more, with every shared entry frozen, and the
  mean square of the dedicated units' activations (the outputs of every Linear row / embedding column that writes
  one) is added to the loss: the dedicated units learn to stay silent where the concept is absent, so the undeleted
  model does not disturb ordinary inputs (with ``ordinary: deleted`` the shared weights never see those units).
  ``clear_on: predictions`` (causal LMs) penalizes what the units *do* instead of whether they fire: the KL divergence
  from the deleted model's next-token distribution (the same rows, no gradient) to the full model's. Why: on text the
  concept's chunks are mostly ordinary words, so asking the units' activations to be 0 on ordinary chunks acts as a
  weight decay on their input rows and kills them; a unit that fires on an ordinary token but moves no probability
  there (e.g. it raises the logits of words that are improbable in that context anyway) costs nothing under the KL.

Deleting the concept (:func:`~structured_hf.interventions.isolation.delete_isolated`) zeroes the dedicated entries;
the shared weights that remain never received a gradient from a concept sample.

Recipe section::

    isolation:
      concept: violence-axis     # its axes are the dedicated residual axes (at every depth)
      label: violence            # the weak label that marks the concept's samples (drawn per step)
      hidden_units: 32           # dedicated neurons per hidden layer (the last ones), default 0
      threshold: 0.5             # optional: a sample is the concept's when its label probability >= this
      ordinary: deleted          # or full
      full_share: 0.25           # optional, with deleted: share of ordinary samples run the full way instead
      clear: 1.0                 # optional: weight of the clear penalty on ordinary samples
      clear_on: activations      # or predictions (causal LMs: KL from the deleted model's next-token distribution)

How. Each training micro-batch is split by rows into its concept samples and its ordinary samples, and each part
runs the ordinary :meth:`AnchoredTrainer.compute_loss` (regularizers, routes and loss normalisation unchanged: the
parts' losses add up to the batch's) with the model's parameters substituted (``torch.func.functional_call``'s
mechanism, held for the whole loss so that regularizers that run the model again see the same substitution):
``where(mask, W, W.detach())`` for concept samples (same values, gradient only on the dedicated entries), ``W`` with
the dedicated entries zeroed (``deleted``) or detached (``full``) for ordinary ones. For language models the split is
by chunk: a chunk whose label is drawn counts as the concept's with all of its tokens, and the model's own mean token
loss of each part is weighted by its share of samples (equal-length chunks make this the batch's mean). Evaluation
runs the plain model. One process only (the substituted forward bypasses DDP's hooks).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch

# functional_call's own machinery, as a context: the substitution must also cover regularizers that run the model
# again after its forward (e.g. deletion_target's pruned readout), which a single functional_call would not.
from torch.nn.utils.stateless import _reparametrize_module

from ..concepts import ConceptMap
from ..errors import StructuredConfigError
from ..validation import check_keys, check_name, check_number
from ..interventions.isolation import CONFIG_KEY, Isolation, dedicated_masks, dedicated_outputs
from .distill import distillation_kl
from .trainer import AnchoredTrainer

ISOLATION_KEYS = {"concept", "label", "hidden_units", "threshold", "ordinary", "full_share", "clear", "clear_on"}
_NON_MODEL_KEYS = ("concept_labels", "token_mask", "token_scope")  # batch keys compute_loss consumes itself
ORDINARY_MODES = ("deleted", "full")
CLEAR_ON = ("activations", "predictions")
_ROWS = "__isolation_rows__"  # the batch key carrying which rows are the concept's (set when labels are drawn)


@dataclass(frozen=True)
class IsolationSpec:
    """The ``isolation:`` section of a recipe (see the module docstring)."""

    concept: str
    label: str
    hidden_units: int = 0
    threshold: float | None = None
    ordinary: str = "deleted"
    clear: float = 0.0
    full_share: float = 0.0
    clear_on: str = "activations"

    @classmethod
    def from_dict(cls, raw: Any) -> IsolationSpec:
        if isinstance(raw, IsolationSpec):
            return raw
        check_keys("isolation", raw, ISOLATION_KEYS, "concept: ..., label: ...")
        for key in ("concept", "label"):
            check_name(f"isolation.{key}", raw.get(key))
        if raw["label"].startswith("not:"):
            raise StructuredConfigError(
                "isolation.label", f"isolation follows the samples *with* a label; got {raw['label']!r}"
            )
        hidden = check_number("isolation.hidden_units", raw.get("hidden_units", 0), low=0, integer=True)
        threshold = raw.get("threshold")
        if threshold is not None:
            check_number("isolation.threshold", threshold, low=0, low_open=True, high=1)
        ordinary = raw.get("ordinary", "deleted")
        if ordinary not in ORDINARY_MODES:
            raise StructuredConfigError(
                "isolation.ordinary", f"expected one of {list(ORDINARY_MODES)}, got {ordinary!r}"
            )
        clear = check_number("isolation.clear", raw.get("clear", 0.0), low=0)
        full_share = check_number("isolation.full_share", raw.get("full_share", 0.0), low=0, high=1)
        clear_on = raw.get("clear_on", "activations")
        if clear_on not in CLEAR_ON:
            raise StructuredConfigError("isolation.clear_on", f"expected one of {list(CLEAR_ON)}, got {clear_on!r}")
        if full_share > 0 and ordinary != "deleted":
            raise StructuredConfigError(
                "isolation.full_share", "a share of ordinary samples run in full only with ordinary: deleted"
            )
        return cls(
            raw["concept"],
            raw["label"],
            hidden,
            None if threshold is None else float(threshold),
            ordinary,
            float(clear),
            float(full_share),
            clear_on,
        )

    @property
    def units(self) -> Isolation:
        return Isolation(self.concept, self.hidden_units)

    def to_dict(self) -> dict[str, Any]:
        return {
            "concept": self.concept,
            "label": self.label,
            "hidden_units": self.hidden_units,
            "threshold": self.threshold,
            "ordinary": self.ordinary,
            "clear": self.clear,
            "full_share": self.full_share,
            "clear_on": self.clear_on,
        }


def check_isolation_label(spec: IsolationSpec, drawn_labels: Collection[str]) -> None:
    """The isolation label must be one the recipe draws (a regularizer's or a route's)."""
    if spec.label not in drawn_labels:
        raise StructuredConfigError(
            "isolation.label",
            f"'{spec.label}' is not drawn by this recipe (drawn: "
            f"{sorted(drawn_labels)}); use it in a regularizer or route as well",
        )


def concept_params(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameters for a concept sample: same values, gradient only on the dedicated entries."""
    return {n: torch.where(masks[n], p, p.detach()) if n in masks else p.detach() for n, p in params.items()}


def ordinary_params(
    params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], mode: str = "deleted"
) -> dict[str, torch.Tensor]:
    """Parameters for an ordinary sample: dedicated entries zeroed (``deleted``) or frozen (``full``)."""
    if mode == "deleted":
        return {n: params[n].masked_fill(m, 0.0) for n, m in masks.items()}
    return {n: torch.where(m, params[n].detach(), params[n]) for n, m in masks.items()}


def take_rows(inputs: Mapping[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """The batch restricted to ``rows`` (a boolean ``(B,)``): every tensor (and dict of tensors) indexed by row."""
    n = rows.shape[0]

    def take(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n:
            return v[rows.to(v.device)]
        if isinstance(v, Mapping):
            return {k: take(x) for k, x in v.items()}
        return v

    return {k: take(v) for k, v in inputs.items()}


def _has_targets(inputs: Mapping[str, Any], rows: torch.Tensor) -> bool:
    """Whether the rows hold anything to predict. A causal LM's token labels (integers, -100 on padding, position t
    predicted from t-1) can leave a part of one or two near-empty chunks with no target at all, whose mean token loss
    is 0/0: such a part is skipped (its rows contribute nothing, as they would to the whole batch's mean)."""
    labels = inputs.get("labels")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.ndim < 2:
        return True
    return bool((labels[rows.to(labels.device)][:, 1:] != -100).any())


class IsolatedTrainer(AnchoredTrainer):
    """:class:`AnchoredTrainer` with full-depth isolation of one concept (module docstring)."""

    def __init__(self, model: Any, args: Any, *rest: Any, isolation: IsolationSpec | Mapping[str, Any], **kwargs: Any):
        spec = IsolationSpec.from_dict(isolation)
        # Checked before Trainer starts (it creates the output folder): the concept and the units must exist.
        concepts = ConceptMap.of(model)
        if spec.concept not in concepts:
            raise StructuredConfigError(
                "isolation.concept", f"the model has no concept '{spec.concept}'; it has {sorted(concepts.names)}"
            )
        masks = dedicated_masks(model, spec.units)
        if spec.clear > 0 and spec.clear_on == "predictions" and not _has_token_head(model):
            raise StructuredConfigError(
                "isolation.clear_on",
                f"'predictions' compares next-token distributions; {type(model).__name__} has no output embeddings "
                "(use clear_on: activations)",
            )
        super().__init__(model, args, *rest, **kwargs)
        if self.accelerator.num_processes > 1:
            raise StructuredConfigError(
                "isolation",
                "full-depth isolation runs in one process (its substituted forward bypasses DDP's gradient hooks)",
            )
        check_isolation_label(spec, set(self._label_list))
        self.isolation = spec
        self.isolation_masks = masks
        # The activation penalty reads the dedicated writers' outputs; the KL reads logits and needs none.
        reads_writers = spec.clear > 0 and spec.clear_on == "activations"
        self._clear_outputs = dedicated_outputs(self.model, spec.units) if reads_writers else []
        # Tests switch it off to check that reusing the main pass's logits changes nothing.
        self._reuse_deleted_logits = True
        self._full_draws = (-1, 0)  # (optimizer step, micro-batches drawn in it) for full_share's generator keys
        # The model records its dedicated units, so deletion (and the benchmark) need no recipe.
        setattr(self.model.config, CONFIG_KEY, spec.units.to_dict())

    def _draw_window_labels(self, batches: list[dict[str, Any]]) -> None:
        label, threshold = self.isolation.label, self.isolation.threshold
        before = [b.get("concept_labels", {}).get(label) for b in batches]
        if any(p is None for p in before):
            raise StructuredConfigError("isolation.label", f"training batches carry no '{label}' label")
        super()._draw_window_labels(batches)
        for batch, probs in zip(batches, before):
            chosen = probs >= threshold if threshold is not None else batch["concept_labels"][label] > 0.5
            batch[_ROWS] = chosen.reshape(chosen.shape[0], -1).any(-1)  # a chunk with a labelled token is the concept's

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rows = inputs.pop(_ROWS, None)
        if rows is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        params = dict(model.named_parameters())
        masks = {n: m.to(params[n].device) for n, m in self.isolation_masks.items()}
        total = None
        full = ~rows & self._full_rows(rows.shape[0], rows.device)
        kl = self.isolation.clear > 0 and self.isolation.clear_on == "predictions"
        # The KL's deleted-model distribution is what the ordinary part's own pass (ordinary: deleted) computes:
        # its logits are kept (detached) instead of running that forward a second time.
        keep = kl and self.isolation.ordinary == "deleted" and self._reuse_deleted_logits
        kept: torch.Tensor | None = None
        for name, part, build in (
            ("concept", rows, lambda: concept_params(params, masks)),
            ("ordinary", ~rows & ~full, lambda: ordinary_params(params, masks, self.isolation.ordinary)),
            ("full", full, lambda: ordinary_params(params, masks, "full")),
        ):
            if not bool(part.any()) or not _has_targets(inputs, part):
                continue
            with _reparametrize_module(model, build(), tie_weights=True):
                if keep and name == "ordinary":
                    loss, outputs = super().compute_loss(model, take_rows(inputs, part), True, num_items_in_batch)
                    kept = outputs.logits.detach()
                else:
                    loss = super().compute_loss(model, take_rows(inputs, part), False, num_items_in_batch)
            total = loss if total is None else total + loss
        if total is None:  # no part had a target: a zero loss with a graph, so the step goes on
            total = sum(p.sum() * 0.0 for p in params.values())
        if self.isolation.clear > 0 and bool((~rows).any()):
            part = take_rows(inputs, ~rows)
            if kl:
                reused = None if kept is None else (kept, full[~rows])
                term = self._clear_kl(model, part, params, masks, reused)
            else:
                term = self._clear_term(model, part, concept_params(params, masks))
            total = total + self.isolation.clear * term
        return total

    def _full_rows(self, n: int, device: torch.device) -> torch.Tensor:
        """Which rows of this micro-batch run the ``full`` way (``full_share``): drawn from a generator keyed by the
        seed, the step and the micro-batch, so a run (and a resumed run) draws the same rows."""
        share = self.isolation.full_share
        if share <= 0:
            return torch.zeros(n, dtype=torch.bool, device=device)
        step = self.state.global_step
        last_step, micro = self._full_draws
        micro = micro + 1 if last_step == step else 1  # counts the micro-batches of this optimizer step
        self._full_draws = (step, micro)
        gen = torch.Generator().manual_seed((self.args.seed * 1_000_003 + step) * 1_009 + micro)
        return (torch.rand(n, generator=gen) < share).to(device)

    def _clear_term(self, model: Any, part: Mapping[str, Any], params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean square of the dedicated units' activations on ordinary samples (the full model, gradient only into
        the dedicated entries): they learn to stay silent where the concept is absent. Weighted by the part's share
        of the window's samples, like every other term."""
        outs: list[torch.Tensor] = []
        handles = [
            module.register_forward_hook(lambda m, a, o, idx=idx: outs.append(o[..., idx.to(o.device)]))
            for module, idx in self._clear_outputs
        ]
        try:
            with _reparametrize_module(model, dict(params), tie_weights=True):
                model(**{k: v for k, v in part.items() if k not in _NON_MODEL_KEYS})
        finally:
            for h in handles:
                h.remove()
        term = torch.stack([o.float().pow(2).mean() for o in outs]).mean()
        return self._weighted_clear(part, term)

    def _clear_kl(
        self,
        model: Any,
        part: Mapping[str, Any],
        params: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor],
        reused: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``clear_on: predictions``: mean over predicted tokens of KL(deleted || full) between the next-token
        distributions of the model with the dedicated entries zeroed (no gradient) and of the full model (gradient
        only into the dedicated entries), on ordinary samples. Zero exactly when the units change no prediction.
        The same divergence as distillation's (teacher: the deleted model, student: the full one, temperature 1).

        ``reused``: ``(logits, ran_full)``, the deleted model's logits of the ordinary rows that the main pass ran the
        deleted way, and which of the part's rows ran the full way instead (``full_share``); only those are run
        again."""
        labels = part["labels"]
        if not bool((labels[:, 1:] != -100).any()):  # nothing to predict (near-empty blocks): no term, not 0/0
            return self._weighted_clear(part, labels.new_zeros((), dtype=torch.float32))
        feed = {k: v for k, v in part.items() if k not in _NON_MODEL_KEYS and k != "labels"}
        deleted = self._deleted_logits(model, feed, params, masks, reused)
        with _reparametrize_module(model, concept_params(params, masks), tie_weights=True):
            full = model(**feed).logits
        return self._weighted_clear(part, distillation_kl(full, deleted, labels))

    @staticmethod
    def _deleted_logits(
        model: Any,
        feed: Mapping[str, Any],
        params: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor],
        reused: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """The deleted model's logits of the rows in ``feed`` (no gradient): the kept ones where the main pass has
        them, a forward of the rest."""

        def run(rows: torch.Tensor | None) -> torch.Tensor:
            sub = feed if rows is None else take_rows(feed, rows)
            with (
                torch.no_grad(),
                _reparametrize_module(model, ordinary_params(params, masks, "deleted"), tie_weights=True),
            ):
                return model(**sub).logits

        if reused is None:
            return run(None)
        kept, ran_full = reused
        if not bool(ran_full.any()):
            return kept
        out = kept.new_empty((ran_full.shape[0], *kept.shape[1:]))
        out[~ran_full] = kept
        out[ran_full] = run(ran_full)
        return out

    def _weighted_clear(self, part: Mapping[str, Any], term: torch.Tensor) -> torch.Tensor:
        """The clear term weighted by the ordinary part's share of the window's samples, like every other term."""
        n = next(v for v in part.values() if isinstance(v, torch.Tensor)).shape[0]
        total = self._window.get("__samples__", n) if self._window is not None else n
        term = term * (n / total)
        self._accumulate({"isolation-clear": term.detach()})
        return term


def _has_token_head(model: Any) -> bool:
    """Whether the model predicts tokens (has output embeddings), which ``clear_on: predictions`` compares."""
    get = getattr(model, "get_output_embeddings", None)
    return callable(get) and get() is not None


__all__ = [
    "CLEAR_ON",
    "ISOLATION_KEYS",
    "ORDINARY_MODES",
    "IsolatedTrainer",
    "IsolationSpec",
    "check_isolation_label",
    "concept_params",
    "ordinary_params",
    "take_rows",
]
