"""Surgery on a transformer's residual stream and attention queries/keys: one adapter for every model built from
:mod:`structured_hf.models.layers` (the color transformer and StructuredGPT).

**Residual sites** (``layers.L.residual_post``, ``layers.L.residual_pre``). The residual stream at a site is a *sum of
writes*: the embeddings (token/position/color/slot vectors) plus the output of every attention output projection
(``attn.o_proj``) and MLP down projection (``mlp.down``) of the blocks before it. If every one of those writers has a
zero row (and bias entry) for axis ``a`` — for an embedding table, a zero column — then ``h[..., a]`` is identically
zero at the site for every input, and at every residual site before it: the axis is *deleted* from that stretch of
the stream (the "span"), not merely attenuated, and no weight up to the site can bring it back. The nGPT-style
hypersphere variant keeps this property: ``normalize`` and ``h + α ⊙ (normalize(u) − h)`` map a zero component to a
zero component (the other components are rescaled a little, because the deleted share of each norm is gone).

Deleting at ``layers.L.residual_pre`` is deleting at ``layers.{L-1}.residual_post`` (the same tensor); at
``layers.0.residual_pre`` only the embeddings are edited. ``layers.L.residual_mid`` (between block L's attention and
its MLP) adds block L's attention output projection to the writers and its MLP to the readers.

For clarity the *readers* inside the span are cleaned too: the LayerNorm before every sub-layer whose input lies in
the span gets gain and bias 0 on the axis, and the linear maps after it (``q_proj``, ``k_proj``, ``v_proj``, ``up``;
the final norm and output head when the span reaches the last block) get zero input columns. Without this the
readers would still see *something* on the axis: LayerNorm outputs ``g_a (x_a − μ)/σ + b_a``, which for ``x_a = 0``
is ``−g_a μ/σ + b_a``, a per-token value built from the *other* axes (no information about the deleted concept, but
a nonzero input nonetheless).

**What it does to LayerNorm statistics.** LayerNorm averages over all ``D`` entries, so the zero entry still counts:
the mean becomes ``Σ_{i≠a} x_i / D`` and the variance gains a ``μ²/D`` term from it. For tokens that kept the axis
clear during training (the anti-subspace regularizer holds non-concept samples near 0 there) the statistics hardly
move; for concept tokens the large component is gone and their normalisation changes, which is the point. This is
also why residual sites cannot be *pruned*: a LayerNorm over ``D − 1`` entries normalises differently from one over
``D`` entries with a zero, the width is shared by every block (also those after the site, which still use the axis),
and attention needs ``D`` divisible by the head count, so a narrower model would not compute the ablated model's
function.

**QK sites** (``layers.L.attn.q`` / ``.k``): the rows (and bias entries) of ``q_proj`` / ``k_proj`` for the axes are
zeroed, so the query (or key) has no component there and the attention scores get no contribution from those
dimensions of their head. Nothing else reads the query/key.

**Tied embeddings** (StructuredGPT's ``lm_head`` shares ``wte``): a deletion whose span stops before the last block
must not change what the output head reads, so the copy is untied first (``tie_word_embeddings: false``, ``lm_head``
keeps the original values); when the span reaches the final norm the head's columns are cleared anyway and the tie
is kept. (With ``norm: hypersphere`` StructuredGPT scales logits by ``wte``'s row norms, which a zero column changes
slightly.)

:func:`register_transformer_layout` declares a model class's embedding tables, norm names and head; the surgery
itself is :func:`transformer_surgery_point`, registered once per class through
:func:`~structured_hf.interventions.surgery.register_surgery_adapter`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import StructuredConfigError
from ..models.color_transformer import ColorTransformerModel
from ..models.layers import TRANSFORMER_SITE_KINDS
from ..models.structured_gpt import StructuredGPTForCausalLM
from .surgery import SurgeryPoint, register_surgery_adapter

_SITE = re.compile(rf"^layers\.(\d+)\.({'|'.join(map(re.escape, TRANSFORMER_SITE_KINDS))})$")


@dataclass(frozen=True)
class TransformerLayout:
    """Where a transformer keeps the parts the residual surgery edits (parameter/module names, dotted).

    Args:
        embeddings: ``(parameter name, dimension that indexes the residual width)`` of every embedding write.
        block_norms: the attribute names of a block's attention-input and MLP-input LayerNorms.
        final_norm: the LayerNorm before the output head.
        head: the output Linear that reads the final stream.
        tied: ``(config attribute, head parameter, embedding parameter)`` when the head can be tied to an embedding.
    """

    embeddings: tuple[tuple[str, int], ...]
    block_norms: tuple[str, str]
    final_norm: str
    head: str
    tied: tuple[str, str, str] | None = None


_LAYOUTS: dict[type, TransformerLayout] = {}


def register_transformer_layout(model_cls: type, layout: TransformerLayout) -> None:
    """Make residual/QK surgery available for ``model_cls`` (blocks in ``model.layers`` with ``.attn`` and ``.mlp``
    from :mod:`structured_hf.models.layers`)."""
    _LAYOUTS[model_cls] = layout
    register_surgery_adapter(model_cls, transformer_surgery_point)


def _layout(model: nn.Module) -> TransformerLayout:
    for cls in type(model).__mro__:
        if cls in _LAYOUTS:
            return _LAYOUTS[cls]
    raise StructuredConfigError("surgery", f"{type(model).__name__} has no registered transformer layout")


def _get(model: nn.Module, name: str) -> Any:
    obj: Any = model
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _untie(layout: TransformerLayout):
    attr, head, emb = layout.tied  # type: ignore[misc]

    def prepare(model: nn.Module) -> dict[str, Any]:
        head_module = _get(model, head.rpartition(".")[0])
        head_module.weight = nn.Parameter(_get(model, emb).detach().clone())
        model.config.__dict__[attr] = False
        if hasattr(model, "get_expanded_tied_weights_keys"):
            model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=False)
        return {attr: False}

    return prepare


def transformer_surgery_point(model: nn.Module, site: str) -> SurgeryPoint:
    """The writers and readers of a residual or query/key site (see the module docstring)."""
    layout = _layout(model)
    n = len(model.layers)
    match = _SITE.match(site)
    if match is None or int(match.group(1)) >= n:
        known = [f"layers.{{0..{n - 1}}}.{s}" for s in TRANSFORMER_SITE_KINDS]
        raise StructuredConfigError(
            "surgery.site", f"unknown site '{site}' for {type(model).__name__}; expected one of {known}"
        )
    layer, kind = int(match.group(1)), match.group(2)
    width = model.config.hidden_size
    if kind.startswith("attn."):
        proj = model.layers[layer].attn.q_proj if kind == "attn.q" else model.layers[layer].attn.k_proj
        return SurgeryPoint(
            None,
            (),
            None,
            (site,),
            width=width,
            writes=((proj.weight, 0), (proj.bias, 0)),
            prune_error=f"'{site}' is a query/key site: pruning it would make one head narrower "
            "than the others; use ablate (zero the projection's rows) instead",
        )
    # Blocks 0..full lie inside the span entirely; a residual_mid site adds block `layer`'s attention writes (and the
    # MLP that reads them) to the span.
    full = layer if kind == "residual_post" else layer - 1
    mid = kind == "residual_mid"
    writes: list = [(_get(model, name), dim) for name, dim in layout.embeddings]
    reads: list = []
    for i in range(full + 1):
        block = model.layers[i]
        writes += [
            (block.attn.o_proj.weight, 0),
            (block.attn.o_proj.bias, 0),
            (block.mlp.down.weight, 0),
            (block.mlp.down.bias, 0),
        ]
    if mid:
        writes += [(model.layers[layer].attn.o_proj.weight, 0), (model.layers[layer].attn.o_proj.bias, 0)]
    for i in range(full + 2):  # blocks 0..full read the span entirely, block full+1 with its attention sub-layer
        if i >= n:
            norm, head = _get(model, layout.final_norm), _get(model, layout.head)
            reads += [(norm.weight, 0), (norm.bias, 0), (head.weight, 1)]
            break
        block = model.layers[i]
        attn_norm, mlp_norm = (getattr(block, name) for name in layout.block_norms)
        reads += [(attn_norm.weight, 0), (attn_norm.bias, 0)]
        reads += [(p.weight, 1) for p in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj)]
        if i <= full or mid:  # (mid: i == layer == full + 1, whose MLP reads the span too)
            reads += [(mlp_norm.weight, 0), (mlp_norm.bias, 0), (block.mlp.up.weight, 1)]
    sites = (
        tuple(f"layers.{i}.residual_post" for i in range(full + 1))
        + tuple(f"layers.{i}.residual_mid" for i in range(full + 1 + int(mid)))
        + tuple(f"layers.{i}.residual_pre" for i in range(min(full + 2, n)))
    )
    prepare = None
    if layout.tied is not None and getattr(model.config, layout.tied[0], False) and full + 1 < n:
        prepare = _untie(layout)
    return SurgeryPoint(
        None,
        (),
        None,
        sites,
        width=width,
        writes=tuple(w for w in writes if w[0] is not None),
        axis_reads=tuple(r for r in reads if r[0] is not None),
        prepare=prepare,
        prune_error=f"'{site}' is a residual-stream site: pruning would change every LayerNorm's "
        "statistics (a mean over D-1 entries is not a mean over D with a zero), narrow the blocks "
        "after the site that still use the axis, and break the head split; use ablate instead",
    )


register_transformer_layout(
    ColorTransformerModel,
    TransformerLayout(
        embeddings=(
            ("op_embed.weight", 1),
            ("color_embed.weight", 0),
            ("color_embed.bias", 0),
            ("slot_embed", 1),
            ("query", 0),
        ),
        block_norms=("attn_norm", "mlp_norm"),
        final_norm="final_norm",
        head="head",
    ),
)
register_transformer_layout(
    StructuredGPTForCausalLM,
    TransformerLayout(
        embeddings=(("wte.weight", 1), ("wpe.weight", 1)),
        block_norms=("ln_1", "ln_2"),
        final_norm="ln_f",
        head="lm_head",
        tied=("tie_word_embeddings", "lm_head.weight", "wte.weight"),
    ),
)

__all__ = ["TransformerLayout", "register_transformer_layout", "transformer_surgery_point"]
