"""Permanent deletion of a concept from the weights: ablate, prune, project out, and heal (results: docs/m2-control.md).

A bottleneck-like site is produced by the rows of one Linear layer (its *producer*) and read by the columns of the
next (its *consumers*). Deleting axes means

- **ablate**: zero the producer's rows (and bias entries) and the consumers' columns of those axes; same width;
- **prune**: remove them, so the model is ``len(axes)`` narrower.

Between them sits the color autoencoder's L2 normalization, which sees a zero in an ablated axis exactly as it sees
a missing axis, so the two agree per sample (to float rounding). Each returns a *new* model (the input is never
modified) whose config agrees with its weights: the width shrinks on prune, the concept map drops concepts that lived
only on deleted axes and re-indexes the rest, and ``config.surgery`` records what was done. Models round-trip through
``save_pretrained`` / ``AutoModel.from_pretrained``.

Models declare their surgery points with :func:`register_surgery_adapter` (the color autoencoder is registered
below; transformers' residual and query/key sites in :mod:`structured_hf.interventions.residual`), so surgery never
reaches into a model by position.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..concepts import ConceptMap
from ..errors import StructuredConfigError
from ..losses import angular_repulsion
from ..models.color_autoencoder import ColorAutoencoderModel
from ..sites import capture, site_dims
from .specs import SurgerySpec, parse_spec
from .suppression import concept_axes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SurgeryPoint:
    """Where a site's axes come from and go to.

    Args:
        producer: the Linear whose output rows are the site's axes (None when ``writes`` lists the writers).
        consumers: the Linears whose input columns read the site's axes.
        width_attr: the config attribute holding the site's width (changed by prune).
        sites: every site that shares these axes (e.g. pre- and post-normalization); concepts on any of them are
            re-indexed together.
        width: the site's width when there is no single producer.
        writes: more writers as ``(parameter, dim)``: the site's axes index dimension ``dim`` of the parameter
            (zeroed by ablate, projected by project_out).
        axis_reads: readers that only an axis-aligned deletion can clear (e.g. LayerNorm gains and the Linears after
            them): zeroed by ablate, left alone by project_out.
        prepare: run on the model copy before any edit (e.g. untie shared weights); returns config changes.
        prune_error: why the site cannot be pruned (prune raises it), or None.
    """

    producer: nn.Linear | None
    consumers: tuple[nn.Linear, ...]
    width_attr: str | None
    sites: tuple[str, ...]
    width: int | None = None
    writes: tuple[tuple[torch.Tensor, int], ...] = ()
    axis_reads: tuple[tuple[torch.Tensor, int], ...] = ()
    prepare: Callable[[nn.Module], dict[str, Any]] | None = None
    prune_error: str | None = None

    @property
    def site_width(self) -> int:
        return self.producer.out_features if self.producer is not None else int(self.width)

    def write_slices(self) -> list[tuple[torch.Tensor, int]]:
        """Every ``(parameter, dim)`` that writes the site's axes."""
        own = (
            []
            if self.producer is None
            else [(self.producer.weight, 0)] + ([] if self.producer.bias is None else [(self.producer.bias, 0)])
        )
        return own + list(self.writes)


_ADAPTERS: dict[type, Callable[[nn.Module, str], SurgeryPoint]] = {}


def register_surgery_adapter(model_cls: type, adapter: Callable[[nn.Module, str], SurgeryPoint]) -> None:
    """Declare how to find the producer/consumers of a site of ``model_cls`` (``adapter(model, site)``)."""
    _ADAPTERS[model_cls] = adapter


def _color_autoencoder_point(model: ColorAutoencoderModel, site: str) -> SurgeryPoint:
    if site not in ("encoder", "bottleneck"):
        raise StructuredConfigError(
            "surgery.site", f"the color autoencoder's surgery sites are 'encoder' and 'bottleneck', got '{site}'"
        )
    return SurgeryPoint(model.encoder.proj, (model.decoder.proj,), "bottleneck_dim", ("encoder", "bottleneck"))


register_surgery_adapter(ColorAutoencoderModel, _color_autoencoder_point)


def surgery_point(model: nn.Module, site: str) -> SurgeryPoint:
    for cls in type(model).__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls](model, site)
    raise StructuredConfigError(
        "surgery",
        f"{type(model).__name__} has no registered surgery adapter; call register_surgery_adapter(model_cls, fn)",
    )


def resolve_axes(
    model: nn.Module, concept: str | None = None, axes: Sequence[int] | None = None, site: str | None = None
) -> tuple[str, tuple[int, ...]]:
    """``(site, sorted axes)`` for a concept (its axes, or a direction's nonzero axes) or explicit axes."""
    if (concept is None) == (axes is None):
        raise StructuredConfigError("surgery", "give exactly one of a concept name or explicit axes")
    dims = site_dims(model)
    if concept is not None:
        spec = ConceptMap.of(model)[concept]
        site = site or spec.site
        axes = concept_axes(spec)
    site = site or ("bottleneck" if "bottleneck" in dims else None)
    if site not in dims:
        raise StructuredConfigError("surgery.site", f"unknown site {site!r}; the model has {sorted(dims)}")
    axes = tuple(sorted(int(a) for a in axes))
    if len(set(axes)) != len(axes) or not axes:
        raise StructuredConfigError("surgery.axes", f"expected distinct axes, got {list(axes)}")
    if axes[0] < 0 or axes[-1] >= dims[site]:
        raise StructuredConfigError(
            "surgery.axes", f"axes {list(axes)} out of range for site '{site}' of width {dims[site]}"
        )
    if len(axes) == dims[site]:
        raise StructuredConfigError("surgery.axes", f"deleting all {dims[site]} axes of '{site}' leaves nothing")
    return site, axes


def remap_concepts(
    concepts: ConceptMap, sites: Sequence[str], removed: Sequence[int], width: int, shrink: bool
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """The concept map after deleting ``removed`` axes of ``sites``.

    Direction concepts lose the removed components (dropped if nothing is left); axes concepts lose the removed
    axes (dropped if none is left). With ``shrink`` the remaining axes are re-indexed to the narrower site.
    Returns ``(entries, dropped names, modified names)``.
    """
    removed_set = set(removed)
    keep = [i for i in range(width) if i not in removed_set]
    new_index = {old: new for new, old in enumerate(keep)}
    entries, dropped, modified = [], [], []
    for c in concepts:
        entry = c.to_dict()
        if c.site not in sites:
            entries.append(entry)
            continue
        if c.direction is not None:
            d = list(c.direction)
            norm = max(abs(x) for x in d)
            kept = [d[i] for i in keep] if shrink else [0.0 if i in removed_set else x for i, x in enumerate(d)]
            if max((abs(x) for x in kept), default=0.0) <= 1e-6 * norm:
                dropped.append(c.name)
                continue
            if any(d[i] != 0.0 for i in removed_set):
                modified.append(c.name)
            entry["direction"] = kept
        else:
            axes = [a for a in c.axes if a not in removed_set]
            if not axes:
                dropped.append(c.name)
                continue
            if len(axes) != len(c.axes):
                modified.append(c.name)
            entry["axes"] = [new_index[a] for a in axes] if shrink else axes
        entries.append(entry)
    return entries, dropped, modified


def _record(model: nn.Module, entry: dict[str, Any]) -> list[dict[str, Any]]:
    return list(getattr(model.config, "surgery", None) or []) + [entry]


def _new_config(model: nn.Module, **changes: Any):
    """A fresh, validated config of the same class with ``changes`` applied all at once (never half-updated)."""
    values = model.config.to_dict()
    values.update(changes)
    config = type(model.config).from_dict(values)
    if hasattr(config, "validate"):
        config.validate()
    return config


def ablate(
    model: nn.Module, concept: str | None = None, *, axes: Sequence[int] | None = None, site: str | None = None
) -> nn.Module:
    """A copy of ``model`` with the axes of ``concept`` (or ``axes``) zeroed in every writer and reader of the site
    (for the autoencoder: the producer's rows and the consumers' columns; for a transformer's residual stream see
    :mod:`structured_hf.interventions.residual`).

    The width is unchanged; the concept map drops the concept (and any concept living only on those axes).
    """
    site, axes = resolve_axes(model, concept, axes, site)
    point = surgery_point(model, site)
    width = point.site_width
    entries, dropped, modified = remap_concepts(ConceptMap.of(model), point.sites, axes, width, shrink=False)
    new = copy.deepcopy(model)
    changes = point.prepare(new) if point.prepare is not None else {}
    new.config = _new_config(
        model,
        **changes,
        concepts=entries,
        surgery=_record(
            model,
            {
                "op": "ablate",
                "site": site,
                "axes": list(axes),
                "concept": concept,
                "removed_concepts": dropped,
                "modified_concepts": modified,
                "width": width,
            },
        ),
    )
    new_point = surgery_point(new, site)
    idx = torch.tensor(axes, dtype=torch.long)
    with torch.no_grad():
        for tensor, dim in new_point.write_slices() + list(new_point.axis_reads):
            tensor.index_fill_(dim, idx.to(tensor.device), 0.0)
        for layer in new_point.consumers:
            layer.weight[:, idx] = 0.0
    logger.info("ablated axes %s of site '%s' (concept %s); concepts removed: %s", list(axes), site, concept, dropped)
    return new


def prune(
    model: nn.Module, concept: str | None = None, *, axes: Sequence[int] | None = None, site: str | None = None
) -> nn.Module:
    """A new, narrower model without the axes of ``concept`` (or ``axes``); config width and concept map follow."""
    site, axes = resolve_axes(model, concept, axes, site)
    point = surgery_point(model, site)
    if point.prune_error is not None:
        raise StructuredConfigError("surgery.site", point.prune_error)
    width = point.producer.out_features
    keep = torch.tensor([i for i in range(width) if i not in set(axes)], dtype=torch.long)
    entries, dropped, modified = remap_concepts(ConceptMap.of(model), point.sites, axes, width, shrink=True)
    config = _new_config(
        model,
        **{point.width_attr: len(keep)},
        concepts=entries,
        surgery=_record(
            model,
            {
                "op": "prune",
                "site": site,
                "axes": list(axes),
                "concept": concept,
                "removed_concepts": dropped,
                "modified_concepts": modified,
                "width": width,
            },
        ),
    )
    names = {id(m): n for n, m in model.named_modules()}
    producer, consumers = names[id(point.producer)], {names[id(c)] for c in point.consumers}
    state = {}
    for key, value in model.state_dict().items():
        module, _, param = key.rpartition(".")
        if module == producer:
            value = value[keep]  # rows (weight) and entries (bias) of the kept axes
        elif module in consumers and param == "weight":
            value = value[:, keep]
        state[key] = value.detach().clone()
    new = type(model)(config)
    new.load_state_dict(state, strict=True)
    new.to(device=next(model.parameters()).device, dtype=next(model.parameters()).dtype)
    new.train(model.training)
    logger.info(
        "pruned axes %s of site '%s' (concept %s): width %d -> %d; concepts removed: %s",
        list(axes),
        site,
        concept,
        width,
        len(keep),
        dropped,
    )
    return new


def project_out(
    model: nn.Module, direction: Sequence[float] | torch.Tensor, *, site: str = "bottleneck", name: str | None = None
) -> nn.Module:
    """A copy of ``model`` with ``direction`` projected out of the producer's output and the consumers' input.

    ``W_p ← (I − vvᵀ) W_p``, ``b_p ← (I − vvᵀ) b_p``, ``W_c ← W_c (I − vvᵀ)``: the post-hoc deletion of a direction
    found after training (e.g. the mean difference of labelled activations), for models without an anchored axis.
    At a transformer's residual site every writer is projected (so the stream is orthogonal to ``v`` up to the site);
    readers behind a LayerNorm are left alone, since a LayerNorm's output along ``v`` is not the stream's.
    """
    point = surgery_point(model, site)
    width = point.site_width
    v = torch.as_tensor(direction, dtype=torch.float64).flatten()
    if v.numel() != width or not torch.isfinite(v).all() or v.norm() == 0:
        raise StructuredConfigError(
            "surgery.direction", f"expected a finite non-zero vector of length {width}, got {v.tolist()}"
        )
    v = v / v.norm()
    proj = torch.eye(width, dtype=torch.float64) - torch.outer(v, v)
    new = copy.deepcopy(model)
    changes = point.prepare(new) if point.prepare is not None else {}
    new.config = _new_config(
        model,
        **changes,
        surgery=_record(model, {"op": "project_out", "site": site, "direction": v.tolist(), "name": name}),
    )
    p = surgery_point(new, site)
    with torch.no_grad():
        for tensor, dim in p.write_slices():
            moved = tensor.double().movedim(dim, 0)  # (width, ...)
            projected = torch.tensordot(proj, moved, dims=([1], [0])).movedim(0, dim)
            tensor.copy_(projected.to(tensor.dtype))
        dtype = next(new.parameters()).dtype
        for layer in p.consumers:
            layer.weight.copy_((layer.weight.double() @ proj).to(dtype))
    return new


def apply_surgery(
    model: nn.Module, spec: SurgerySpec | str, retain_colors: torch.Tensor | None = None, **heal_kwargs: Any
) -> nn.Module:
    """Run a :class:`SurgerySpec` (or its string form), healing afterwards when ``spec.heal_steps > 0``."""
    spec = parse_spec(spec) if not isinstance(spec, SurgerySpec) else spec
    if not isinstance(spec, SurgerySpec):
        raise StructuredConfigError("surgery", f"'{spec}' is an inference-time intervention, not surgery")
    op = ablate if spec.kind == "ablate" else prune
    new = op(model, spec.concept, axes=spec.axes, site=spec.site)
    if spec.heal_steps:
        if retain_colors is None:
            raise StructuredConfigError("surgery.heal_steps", "healing needs retain colors (see heal())")
        new = heal(new, retain_colors, steps=spec.heal_steps, **heal_kwargs)
    return new


def heal(
    model: nn.Module,
    retain_colors: torch.Tensor | Any,
    *,
    steps: int = 200,
    lr: float = 3.0e-3,
    batch_size: int = 64,
    repulsion_weight: float = 1.0e-2,
    repulsion_power: float = 100.0,
    site: str = "bottleneck",
    trainable: str = "encoder",
    seed: int = 0,
) -> nn.Module:
    """Close the hole a deletion leaves: briefly fine-tune on *retain* colors only, re-spreading their latents.

    After a deletion the samples that lived near the concept are renormalized onto whatever part of the remaining
    sphere their residual happens to point at, so retain colors that shared a little of the deleted axes land a bit
    off their old place. Healing fine-tunes for ``steps`` steps on retain colors only (never on the concept), with the
    reconstruction loss plus the angular repulsion regularizer at ``site`` to re-spread them over the remaining
    sphere.

    By default only the *encoder* side trains (``trainable="encoder"``): the decoder, and with it the set of outputs
    the deleted model can produce at all, stays exactly as the deletion left it; healing can only re-route inputs to
    outputs that already exist. ``trainable="all"`` re-fits the decoder too.

    Measured (``scripts/relearn.py``, seed 0, 200 steps, retain = 8³ grid minus colors with similarity >= 0.5 to red):
    on ex2.9.1 the encoder-only heal *raised* red's error (0.20 -> 0.30) and cut the retain error 3x, but on ex2.10.1
    it brought red back (0.41 -> 0.04) because the pruned decoder still had a near-red output that dark/pale reds in
    the retain set pulled red's latent to; ``all`` brought red back on both (0.07, 0.03). Both made a later relearning
    attack faster (2-7 steps instead of 65-80). Healing is therefore a repair of collateral damage that must be
    checked per model, not a way to make deletion stick.

    Args:
        model: the model after ablation/pruning (not modified; a healed copy is returned).
        retain_colors: ``(N, 3)`` RGB colors that must keep reconstructing (exclude the concept's neighbourhood).
        steps, lr, batch_size: Adam fine-tuning budget (batches drawn with replacement from ``retain_colors``).
        repulsion_weight, repulsion_power: weight and ``p`` of the angular repulsion term (0 disables it).
        site: the site to re-spread.
        trainable: ``"encoder"``, ``"decoder"`` (top-level module names) or ``"all"``.
        seed: seed of the batch draws.
    """
    colors = torch.as_tensor(retain_colors, dtype=torch.float32)
    if colors.ndim != 2 or colors.shape[-1] != 3 or len(colors) == 0:
        raise StructuredConfigError(
            "heal.retain_colors", f"expected a non-empty (N, 3) tensor, got {tuple(colors.shape)}"
        )
    new = copy.deepcopy(model)
    new.train()
    if trainable == "all":
        params = list(new.parameters())
    else:
        params = [p for n, p in new.named_parameters() if n.startswith(f"{trainable}.")]
        if not params:
            top = sorted({n.split(".")[0] for n, _ in new.named_parameters()})
            raise StructuredConfigError(
                "heal.trainable", f"no parameters under '{trainable}'; expected 'all' or one of {top}"
            )
    for p in new.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = colors[torch.randint(len(colors), (batch_size,), generator=g)].to(new.device)
        with capture(new, [site]) as acts:
            out = new(colors=batch, labels=batch)
        loss = out.loss
        if repulsion_weight:
            loss = loss + repulsion_weight * angular_repulsion(acts[site], power=repulsion_power).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in new.parameters():
        p.requires_grad_(True)
    new.eval()
    new.config = _new_config(
        new,
        surgery=_record(
            model,
            {
                "op": "heal",
                "site": site,
                "steps": steps,
                "lr": lr,
                "repulsion_weight": repulsion_weight,
                "trainable": trainable,
                "retain_colors": len(colors),
            },
        ),
    )
    return new


__all__ = [
    "SurgeryPoint",
    "ablate",
    "apply_surgery",
    "heal",
    "project_out",
    "prune",
    "register_surgery_adapter",
    "remap_concepts",
    "resolve_axes",
    "surgery_point",
]
