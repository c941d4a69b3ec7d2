"""Relearning attacks: does a deleted concept come back under fine-tuning? (results: docs/m2-control.md on)

Unlearning is notoriously easy to undo: a few steps of fine-tuning on the forgotten data often restore it. The attack
here fine-tunes a model (all weights, Adam) on a small set of concept samples (e.g. 64 red-ish colors, never the
prototype itself) and records the error on the concept's prototype after every step: the recovery curve, its lowest
value, and the number of steps until it falls below a threshold. The same attack is run on

- the anchored model with the concept deleted (pruned), optionally healed;
- a post-hoc baseline: the same recipe without concept regularizers, the concept's direction found after training
  as the mean difference of labelled activations, and projected out of the weights;
- a data-filtering baseline: the same unanchored recipe trained on data with the concept's neighbourhood removed.

All three are trained with the same budget (the recipe's schedule and step count).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.trainer_callback import PrinterCallback

from ..concepts import ConceptSpec
from ..data.collators import ColumnarDataset
from ..data.colors import NAMED_COLORS, resolve_colors, rgb_grid
from ..data.labels import parse_labelers
from ..errors import StructuredConfigError
from ..interventions import ablate, heal, project_out, prune
from ..sites import capture
from ..training import build_trainer
from ..training.recipe import build_task_splits, model_config
from .color_metrics import reconstruct, site_activations
from .color_tasks import RED_FAR, RED_INVOLVED, example_redness, task_arrays
from .similarity import hsv_similarity
from .variants import anchor_color

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackConfig:
    """The relearning budget.

    Args:
        steps: optimizer steps of fine-tuning.
        lr: Adam learning rate.
        batch_size: samples per step, drawn with replacement from the attack set.
        num_samples: size of the attack set (concept samples).
        min_similarity: HSV similarity to the anchor a color needs to count as a concept sample.
        threshold: the concept counts as recovered when its prototype's MSE falls below this.
        seed: seed of the attack set and of the batch draws.
        optimizer: ``"adam"`` or ``"adamw"`` (the unlearning literature's attack; with ``weight_decay`` 0 the two
            differ only in name).
        weight_decay: AdamW's decoupled weight decay.
        eval_every: probe every N steps (and after the last); 1 probes after every step.
    """

    steps: int = 200
    lr: float = 1.0e-2
    batch_size: int = 64
    num_samples: int = 64
    min_similarity: float = 0.5
    threshold: float = 1.0e-2
    seed: int = 0
    optimizer: str = "adam"
    weight_decay: float = 0.0
    eval_every: int = 1

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise StructuredConfigError("attack.optimizer", f"expected 'adam' or 'adamw', got {self.optimizer!r}")
        if not self.weight_decay >= 0:
            raise StructuredConfigError("attack.weight_decay", f"expected a number >= 0, got {self.weight_decay!r}")
        for name in ("steps", "batch_size", "num_samples", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StructuredConfigError(f"attack.{name}", f"expected a positive integer, got {value!r}")
        for name in ("lr", "threshold"):
            if not getattr(self, name) > 0:
                raise StructuredConfigError(
                    f"attack.{name}", f"expected a positive number, got {getattr(self, name)!r}"
                )
        if not 0.0 <= self.min_similarity < 1.0:
            raise StructuredConfigError(
                "attack.min_similarity", f"expected a value in [0, 1), got {self.min_similarity}"
            )


def concept_samples(
    anchor: str | Sequence[float],
    num: int = 64,
    min_similarity: float = 0.5,
    seed: int = 0,
    exclude_anchor: bool = True,
) -> np.ndarray:
    """``num`` colors drawn uniformly from the RGB cube among those with similarity >= ``min_similarity`` to the
    anchor (rejection sampling). With ``exclude_anchor`` the anchor itself (within 1e-3) is never drawn, so recovery
    of the prototype is generalization, not memorization."""
    anchor_rgb = resolve_colors([anchor])[0]
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for _ in range(1000):
        cand = rng.random((4096, 3))
        ok = hsv_similarity(cand, anchor) >= min_similarity
        if exclude_anchor:
            ok &= np.abs(cand - anchor_rgb).max(-1) > 1e-3
        out.extend(cand[ok])
        if len(out) >= num:
            return np.asarray(out[:num])
    raise StructuredConfigError(
        "attack.min_similarity", f"found only {len(out)} colors with similarity >= {min_similarity} to {anchor!r}"
    )


def _mse(model: nn.Module, colors: np.ndarray) -> float:
    return float(((reconstruct(model, colors) - colors) ** 2).mean())


def attack_loop(
    model: nn.Module,
    step_loss: Callable[[nn.Module, torch.Generator], torch.Tensor],
    probes: Mapping[str, Callable[[nn.Module], float]],
    config: AttackConfig,
    grad_mask: Callable[[nn.Module], Sequence[tuple[torch.Tensor, int, torch.Tensor]]] | None = None,
) -> dict[str, Any]:
    """The attack shared by every model family: fine-tune a copy of ``model`` (all weights, Adam or AdamW at
    ``config.lr``) for ``config.steps`` steps on ``step_loss(model, generator)`` (the loss of one attack batch), and
    record every probe (``probe(model) -> error``, eval mode) before the first step and every ``config.eval_every``
    steps after it (always after the last).

    The first probe is the concept's: its curve decides ``min``, ``min_step``, ``final`` and ``steps_to_threshold``;
    the others show what the attack costs elsewhere (``initial_<name>``, ``final_<name>``). ``steps`` lists the step
    of every probe.

    ``grad_mask(copy) -> [(parameter, dim, index)]`` freezes slices of the copy's parameters (their gradient is zeroed
    before every update; with weight decay 0 and gradients that were always zero, Adam leaves them bit-identical):
    e.g. the writers of a deleted channel, to test whether an attack reopens the channel through them.
    """
    if not probes:
        raise StructuredConfigError("attack.probe_colors", "need at least the concept's probe")
    attacked = copy.deepcopy(model)
    opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(attacked.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    frozen = list(grad_mask(attacked)) if grad_mask is not None else []
    g = torch.Generator().manual_seed(config.seed)
    curves: dict[str, list[float]] = {name: [] for name in probes}
    steps_seen: list[int] = []
    for step in range(config.steps + 1):
        if step % config.eval_every == 0 or step == config.steps:
            attacked.eval()
            steps_seen.append(step)
            for name, probe in probes.items():
                curves[name].append(float(probe(attacked)))
        if step == config.steps:
            break
        attacked.train()
        loss = step_loss(attacked, g)
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            for tensor, dim, index in frozen:
                if tensor.grad is not None:
                    tensor.grad.index_fill_(dim, index.to(tensor.device), 0.0)
        opt.step()
    concept = next(iter(curves))
    curve = np.asarray(curves[concept])
    below = np.nonzero(curve < config.threshold)[0]
    result = {
        "curves": curves,
        "steps": steps_seen,
        "initial": float(curve[0]),
        "min": float(curve.min()),
        "min_step": steps_seen[int(curve.argmin())],
        "final": float(curve[-1]),
        "steps_to_threshold": steps_seen[int(below[0])] if len(below) else None,
    }
    for name in list(curves)[1:]:
        result[f"initial_{name}"] = curves[name][0]
        result[f"final_{name}"] = curves[name][-1]
    return result


def relearning_attack(
    model: nn.Module,
    attack_colors: np.ndarray,
    probe_colors: Mapping[str, np.ndarray],
    config: AttackConfig = AttackConfig(),
) -> dict[str, Any]:
    """Fine-tune a copy of ``model`` on ``attack_colors`` and record the MSE of each probe set after every step.

    Args:
        model: the model to attack (not modified).
        attack_colors: (N, 3) concept samples the attacker trains on (reconstruction loss).
        probe_colors: ``{name: (M, 3)}``; the first entry is the concept (its curve decides ``min``,
            ``steps_to_threshold``), the others (e.g. retain colors) show what the attack costs elsewhere.
        config: the budget.

    Returns ``{"curves": {name: [mse at step 0..steps]}, "initial", "min", "min_step", "final",
    "steps_to_threshold" (None if never), "final_<name>"...}``.
    """
    if not probe_colors:
        raise StructuredConfigError("attack.probe_colors", "need at least the concept's probe colors")
    data = torch.as_tensor(np.asarray(attack_colors), dtype=torch.float32, device=model.device)

    def step_loss(m: nn.Module, g: torch.Generator) -> torch.Tensor:
        batch = data[torch.randint(len(data), (config.batch_size,), generator=g).to(data.device)]
        return m(colors=batch, labels=batch).loss

    def probe(colors: np.ndarray) -> Callable[[nn.Module], float]:
        return lambda m: _mse(m, colors)

    probes = {name: probe(np.asarray(colors)) for name, colors in probe_colors.items()}
    return attack_loop(model, step_loss, probes, config)


# ---- baselines ----------------------------------------------------------------------------------------------------
def mean_difference_direction(
    model: nn.Module, colors: np.ndarray, label_probability: np.ndarray, site: str = "bottleneck"
) -> np.ndarray:
    """The concept direction found after training: E[x | labelled] − E[x | not labelled] at ``site``.

    With weak labels drawn as Bernoulli(p), the expectation over the labelling is a p-weighted mean, so the direction
    is computed exactly from the probabilities instead of from one noisy draw.
    """
    acts = site_activations(model, colors, site)
    p = np.asarray(label_probability, dtype=np.float64)
    if p.sum() <= 0 or (1 - p).sum() <= 0:
        raise StructuredConfigError("label", "the label probabilities are all 0 or all 1: no mean difference exists")
    diff = (p[:, None] * acts).sum(0) / p.sum() - ((1 - p)[:, None] * acts).sum(0) / (1 - p).sum()
    return diff / np.linalg.norm(diff)


def unanchored_recipe(recipe):
    """The same recipe with every concept regularizer removed (concept-free terms such as repulsion stay)."""
    return dataclasses.replace(
        recipe, regularizers=[copy.deepcopy(r) for r in recipe.regularizers if r.get("concept") is None]
    )


def train_recipe(
    recipe,
    keep: Callable[[np.ndarray], np.ndarray] | None = None,
    quiet: bool = True,
    keep_rows: Callable[[Any], np.ndarray] | None = None,
) -> tuple[nn.Module, float]:
    """Train a recipe in-process (no figures); ``keep(colors) -> bool mask`` filters the training colors, and
    ``keep_rows(dataset) -> bool mask`` filters rows of any training dataset (e.g. color-task examples).

    Returns ``(model in eval mode, train seconds)``. ``quiet`` drops Trainer's per-log-step printing.
    """
    trainer = build_trainer(recipe)
    if quiet:
        trainer.remove_callback(PrinterCallback)
    if keep is not None or keep_rows is not None:
        source = trainer.train_dataset.source
        mask = np.asarray(
            keep(np.asarray(source["colors"], dtype=np.float64)) if keep is not None else keep_rows(source), dtype=bool
        )
        if not mask.any():
            raise StructuredConfigError("keep", "the filter removed every training color")
        trainer.train_dataset = ColumnarDataset(source.select(np.nonzero(mask)[0].tolist()))
        logger.info("data filter kept %d of %d training rows", int(mask.sum()), len(mask))
    start = time.perf_counter()
    trainer.train()
    return trainer.model.eval(), time.perf_counter() - start


def recipe_concept_anchor(recipe, concept: str) -> str | tuple[float, ...]:
    """The color a direction concept of the recipe's model is about (its first prototype): what relearning attacks
    train on and probe around. Errors name the concept."""
    spec = next((c for c in model_config(recipe).concepts if c["name"] == concept), None)
    if spec is None or "direction" not in spec:
        raise StructuredConfigError("concept", f"'{concept}' is not a direction concept of the recipe's model")
    anchor = anchor_color(ConceptSpec.from_dict(spec))
    if anchor is None:
        raise StructuredConfigError("concept", f"concept '{concept}' has no prototype color to attack and probe around")
    return anchor


def relearning_study(
    recipe,
    concept: str = "red",
    label: str | None = None,
    attack: AttackConfig = AttackConfig(),
    heal_steps: int = 0,
    heal_kwargs: Mapping[str, Any] | None = None,
    heal_modes: Sequence[str] = ("encoder", "all"),
    models: Mapping[str, nn.Module] | None = None,
) -> dict[str, Any]:
    """Train the anchored model and the two baselines from ``recipe`` and attack all of them.

    Args:
        recipe: the anchored recipe (a :class:`~structured_hf.training.recipe.Recipe`).
        concept: the direction concept to delete (its first prototype is the probe color and anchor).
        label: the weak label used for the post-hoc direction (default: the concept's name).
        attack: the relearning budget (the same for every model).
        heal_steps: also attack healed copies of the deleted model, one per ``heal_modes`` entry (what trains:
            ``encoder``, the default of :func:`~structured_hf.interventions.heal`, or ``all``).
        models: pre-trained ``{"anchored", "unanchored", "filtered"}`` models to reuse (missing ones are trained).

    Returns a JSON-ready dict with one row per attacked model and their curves.
    """
    anchor = recipe_concept_anchor(recipe, concept)
    label = label or concept
    labelers = parse_labelers(recipe.data.get("labels"))
    if label not in labelers:
        raise StructuredConfigError("label", f"no weak label '{label}' in the recipe; it has {sorted(labelers)}")

    models = dict(models or {})
    runtimes: dict[str, float] = {}
    near = lambda c: hsv_similarity(c, anchor) >= attack.min_similarity  # noqa: E731
    for name, make in (
        ("anchored", lambda: train_recipe(recipe)),
        ("unanchored", lambda: train_recipe(unanchored_recipe(recipe))),
        ("filtered", lambda: train_recipe(unanchored_recipe(recipe), keep=lambda c: ~near(c))),
    ):
        if name not in models:
            models[name], runtimes[name] = make()

    grid = rgb_grid(8)
    retain = grid[~near(grid)]
    variants: dict[str, nn.Module] = {}
    variants["anchored+pruned"] = prune(models["anchored"], concept)
    for mode in heal_modes if heal_steps else ():
        variants[f"anchored+pruned+healed({mode})"] = heal(
            variants["anchored+pruned"], retain, steps=heal_steps, trainable=mode, **dict(heal_kwargs or {})
        )
    direction = mean_difference_direction(models["unanchored"], grid, labelers[label](grid))
    variants["unanchored+projected"] = project_out(models["unanchored"], direction, name=f"{concept} (mean diff)")
    variants["filtered"] = models["filtered"]
    variants["anchored (not deleted)"] = models["anchored"]

    attack_set = concept_samples(anchor, attack.num_samples, attack.min_similarity, attack.seed)
    held_out = concept_samples(anchor, 256, attack.min_similarity, attack.seed + 1)
    probes = {
        "prototype": resolve_colors([anchor]),
        "concept_heldout": held_out,
        "retain": retain,
        "named_other": np.asarray(
            [
                rgb
                for n, rgb in NAMED_COLORS.items()
                if hsv_similarity(np.asarray([rgb]), anchor)[0] < attack.min_similarity
            ]
        ),
    }
    rows = {}
    for name, m in variants.items():
        logger.info("relearning attack on %s", name)
        rows[name] = relearning_attack(m, attack_set, probes, attack)
    return {
        "concept": concept,
        "anchor": anchor,
        "attack": asdict(attack),
        "heal_steps": heal_steps,
        "train_runtime_s": runtimes,
        "rows": rows,
        "post_hoc_direction": direction.tolist(),
    }


def relearning_table(study: Mapping[str, Any]) -> str:
    """Markdown table of a :func:`relearning_study` result."""
    a = study["attack"]
    lines = [
        f"Relearning attack on '{study['concept']}': {a['steps']} Adam steps at lr {a['lr']:g} on "
        f"{a['num_samples']} colors with similarity >= {a['min_similarity']:g}; threshold {a['threshold']:g}.",
        "",
        "| model | prototype MSE before | lowest | at step | final | steps to threshold | "
        "held-out concept MSE before → after | retain MSE before → after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in study["rows"].items():
        steps = "never" if r["steps_to_threshold"] is None else str(r["steps_to_threshold"])
        lines.append(
            f"| {name} | {r['initial']:.4f} | {r['min']:.4f} | {r['min_step']} | {r['final']:.4f} | {steps} "
            f"| {r['initial_concept_heldout']:.4f} → {r['final_concept_heldout']:.4f} "
            f"| {r['initial_retain']:.4f} → {r['final_retain']:.4f} |"
        )
    return "\n".join(lines) + "\n"


__all__ = [
    "AttackConfig",
    "attack_loop",
    "concept_samples",
    "mean_difference_direction",
    "relearning_attack",
    "relearning_study",
    "relearning_table",
    "train_recipe",
    "unanchored_recipe",
]


# ---- the color-operation transformer (M3) -------------------------------------------------------------------------
def residual_mean_difference(
    model: nn.Module, arrays: Mapping[str, torch.Tensor], label_probability: np.ndarray, site: str
) -> np.ndarray:
    """The post-hoc concept direction at a transformer site: E[x | labelled] − E[x | not labelled] over all token
    positions, each token weighted by its example's label probability (the expectation over weak labels)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture(model, [site]) as acts:
            model(op_ids=arrays["op"], colors=arrays["colors"], operand_mask=arrays["operand_mask"])
    finally:
        model.train(was_training)
    x = acts[site].double().numpy()  # (N, T, D)
    p = np.broadcast_to(np.asarray(label_probability, dtype=np.float64)[:, None], x.shape[:2])
    x, p = x.reshape(-1, x.shape[-1]), p.reshape(-1)
    if p.sum() <= 0 or (1 - p).sum() <= 0:
        raise StructuredConfigError("label", "the label probabilities are all 0 or all 1: no mean difference exists")
    diff = (p[:, None] * x).sum(0) / p.sum() - ((1 - p)[:, None] * x).sum(0) / (1 - p).sum()
    return diff / np.linalg.norm(diff)


def transformer_relearning_study(
    recipe,
    concept: str = "red",
    label: str | None = None,
    attack: AttackConfig = AttackConfig(lr=2.0e-3, threshold=5.0e-3),
    models: Mapping[str, nn.Module] | None = None,
) -> dict[str, Any]:
    """The relearning attack on the color-operation transformer.

    - ``anchored+ablated``: the anchored model with the concept deleted from the residual stream
      (:func:`~structured_hf.interventions.ablate`);
    - ``unanchored+projected``: the post-hoc baseline: the same recipe without concept regularizers, the concept's
      direction at the same site found after training as the label-weighted mean difference of residual activations
      (training split), projected out of every writer of the stream (:func:`~structured_hf.interventions.project_out`);
    - both models before deletion, for reference.

    The attacker fine-tunes every weight on ``attack.num_samples`` concept-involving *training* examples (redness of
    an operand or the result >= 0.6) with the task loss; the probes are the test split's concept-involving and
    far-from-concept examples (MSE). ``models`` may hold pre-trained ``{"anchored", "unanchored"}`` models.
    """
    spec = recipe.specs.concepts[concept]
    if spec.direction is None:
        raise StructuredConfigError("concept", f"'{concept}' is not a direction concept of the recipe's model")
    label = label or concept
    if label not in parse_labelers(recipe.data.get("labels")):
        raise StructuredConfigError("label", f"no weak label '{label}' in the recipe")
    splits = build_task_splits(recipe)
    models = dict(models or {})
    runtimes: dict[str, float] = {}
    for name, make in (
        ("anchored", lambda: train_recipe(recipe)),
        ("unanchored", lambda: train_recipe(unanchored_recipe(recipe))),
    ):
        if name not in models:
            models[name], runtimes[name] = make()
    train = task_arrays(splits["train"])
    p = np.asarray(splits["train"][f"prob_{label}"], dtype=np.float64)
    direction = residual_mean_difference(models["unanchored"], train, p, spec.site)
    variants = {
        "anchored+ablated": ablate(models["anchored"], concept),
        "unanchored+projected": project_out(
            models["unanchored"], direction, site=spec.site, name=f"{concept} (mean diff)"
        ),
        "anchored (not deleted)": models["anchored"],
        "unanchored (not deleted)": models["unanchored"],
    }
    involved = np.flatnonzero(example_redness(train) >= RED_INVOLVED)
    if len(involved) < attack.num_samples:
        raise StructuredConfigError("attack.num_samples", f"only {len(involved)} concept-involving training examples")
    pick = np.random.default_rng(attack.seed).choice(involved, attack.num_samples, replace=False)
    attack_set = {k: v[torch.as_tensor(pick)] for k, v in train.items()}
    test = task_arrays(splits["test"])
    red = example_redness(test)
    probe_sets = {"concept": _subset(test, red >= RED_INVOLVED), "far": _subset(test, red < RED_FAR)}

    def step_loss(m: nn.Module, g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(attack.num_samples, (attack.batch_size,), generator=g)
        return m(
            op_ids=attack_set["op"][idx],
            colors=attack_set["colors"][idx],
            operand_mask=attack_set["operand_mask"][idx],
            labels=attack_set["target"][idx],
        ).loss

    def probe(arrays):
        def mse(m: nn.Module) -> float:
            with torch.no_grad():
                out = m(op_ids=arrays["op"], colors=arrays["colors"], operand_mask=arrays["operand_mask"]).prediction
            return float(((out - arrays["target"]) ** 2).mean())

        return mse

    rows = {}
    for name, m in variants.items():
        logger.info("relearning attack on %s", name)
        rows[name] = attack_loop(m, step_loss, {k: probe(v) for k, v in probe_sets.items()}, attack)
    return {
        "concept": concept,
        "site": spec.site,
        "attack": asdict(attack),
        "train_runtime_s": runtimes,
        "rows": rows,
        "post_hoc_direction": direction.tolist(),
        "post_hoc_cosine_with_anchor": float(direction @ spec.unit_direction(dtype=torch.float64).numpy()),
        "n_attack": attack.num_samples,
        "n_probe": {k: len(v["op"]) for k, v in probe_sets.items()},
    }


def _subset(arrays: Mapping[str, torch.Tensor], mask: np.ndarray) -> dict[str, torch.Tensor]:
    idx = torch.as_tensor(np.flatnonzero(mask))
    return {k: v[idx] for k, v in arrays.items()}


def transformer_relearning_table(study: Mapping[str, Any]) -> str:
    """Markdown table of a :func:`transformer_relearning_study` result."""
    a = study["attack"]
    lines = [
        (
            f"Relearning attack on '{study['concept']}' (deleted at `{study['site']}`): {a['steps']} Adam steps at "
            f"lr {a['lr']:g}, batch {a['batch_size']}, on {a['num_samples']} red-involving training examples; "
            f"probes: {study['n_probe']['concept']} red-involving and {study['n_probe']['far']} far-from-red test "
            f"examples; recovered when the red-involving MSE < {a['threshold']:g}. Post-hoc direction's cosine "
            f"with the anchor axis: {study['post_hoc_cosine_with_anchor']:.2f}."
        ),
        "",
        "| model | red MSE before | lowest | at step | final | steps to threshold | far MSE before → after |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in study["rows"].items():
        steps = "never" if r["steps_to_threshold"] is None else str(r["steps_to_threshold"])
        lines.append(
            f"| {name} | {r['initial']:.2e} | {r['min']:.2e} | {r['min_step']} | {r['final']:.2e} | {steps} "
            f"| {r['initial_far']:.2e} → {r['final_far']:.2e} |"
        )
    return "\n".join(lines) + "\n"


__all__ += ["residual_mean_difference", "transformer_relearning_study", "transformer_relearning_table"]
