"""Exact deletion of residual-stream and query/key axes in a pretrained model, from its layout.

The residual stream at a site is a sum of writes: the embeddings plus every attention output projection and MLP
down projection of the blocks before it. Zero axis ``a`` in all of them (rows of a Linear, columns of a GPT-2
``Conv1D``, bias entries, embedding columns) and ``h[..., a]`` is identically 0 at the site and at every residual
site before it, for every input (:func:`structured_hf.ablate`). The readers of that stretch are cleaned too: the
norms in front of every sub-layer that reads it get gain (and bias) 0 on the axis, so a LayerNorm's output there is
0 rather than ``−g·μ/σ + b`` built from the other axes; for RMSNorm (Llama family) a zero input already gives a zero
output. The norms still count the zero entry in their statistics (mean and variance over ``D`` entries): that is the
deletion's effect on the other axes, the same as in structured_hf's own transformers.

Spans: ``residual_post`` of block L covers blocks 0..L; ``residual_pre`` of block L is ``residual_post`` of L-1
(the embeddings alone for L = 0); ``residual_mid`` of L adds block L's attention output to the writers and its MLP to
the readers. Tied embeddings (the head shares the token embedding) are untied first when the span stops before the
last block, so the head keeps reading what later blocks write; when the span reaches the final norm the head's
columns are cleared with the embedding's and the tie is kept.

Query/key sites: the projection rows of those axes (for a fused qkv projection, the rows the layout maps them to).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..errors import StructuredConfigError
from ..interventions.surgery import SurgeryPoint
from ..layouts import FusedQKV, Layout, Proj, get_path, layout_for
from .common import check_site_name, unwrap

_SITE = re.compile(r"^layers\.(\d+)\.(residual_pre|residual_mid|residual_post|attn\.q|attn\.k)$")


class FusedRows:
    """The rows (or bias entries) of a fused qkv projection holding the query or key axes of a site.

    Surgery fills a site's axes with ``index_fill_(dim, axes, value)``; this maps the axes to the fused
    projection's output indices first (the layout's ``rows``), so one deletion code path serves every layout.
    """

    def __init__(self, tensor: torch.Tensor, dim: int, fused: FusedQKV, config: Any, which: str):
        self.tensor, self.dim, self.fused, self.config, self.which = tensor, dim, fused, config, which

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def index_fill_(self, dim: int, index: torch.Tensor, value: float) -> FusedRows:
        rows = self.fused.rows([int(i) for i in index.tolist()], self.config, self.which)
        self.tensor.index_fill_(self.dim, torch.tensor(rows, dtype=torch.long, device=self.tensor.device), value)
        return self


def _writes(module: nn.Module, proj: Proj) -> list[tuple[torch.Tensor, int]]:
    layer = get_path(module, proj.path)
    return [(layer.weight, proj.out_dim)] + ([(layer.bias, 0)] if getattr(layer, "bias", None) is not None else [])


def _reads(module: nn.Module, norm: str, projections: tuple[Proj, ...]) -> list[tuple[torch.Tensor, int]]:
    n = get_path(module, norm)
    out = [(n.weight, 0)] + ([(n.bias, 0)] if getattr(n, "bias", None) is not None else [])
    return out + [(get_path(module, p.path).weight, p.in_dim) for p in projections]


def _untie(layout: Layout):
    attr, head, _ = layout.tied  # type: ignore[misc]

    def prepare(model: nn.Module) -> dict[str, Any]:
        base = unwrap(model)
        head_module = get_path(base, head.rpartition(".")[0])
        head_module.weight = nn.Parameter(head_module.weight.detach().clone())
        base.config.__dict__[attr] = False
        if hasattr(base, "get_expanded_tied_weights_keys"):
            base.all_tied_weights_keys = base.get_expanded_tied_weights_keys(all_submodels=False)
        return {attr: False}

    return prepare


def _qk_point(block: nn.Module, layout: Layout, config: Any, site: str, which: str) -> SurgeryPoint:
    width = config.hidden_size
    if layout.fused_qkv is not None:
        fused = layout.fused_qkv
        layer = get_path(block, fused.proj.path)
        writes = [(FusedRows(layer.weight, fused.proj.out_dim, fused, config, which), 0)]
        if getattr(layer, "bias", None) is not None:
            writes.append((FusedRows(layer.bias, 0, fused, config, which), 0))
    else:
        proj = layout.query if which == "q" else layout.key
        layer = get_path(block, proj.path)
        width = layer.weight.shape[proj.out_dim]
        writes = _writes(block, proj)
    return SurgeryPoint(
        None,
        (),
        None,
        (site,),
        width=width,
        writes=tuple(writes),
        prune_error=f"'{site}' is a query/key site: pruning would make one head narrower than the "
        "others; use ablate (zero the projection's rows)",
    )


def pretrained_surgery_point(model: nn.Module, site: str) -> SurgeryPoint:
    """Writers and readers of a residual or query/key site of a pretrained model (see the module docstring)."""
    if hasattr(model, "peft_config"):
        raise StructuredConfigError(
            "surgery",
            "the model still has a LoRA adapter: merge it first (model = model.merge_and_unload()), then delete",
        )
    base = unwrap(model)
    layout = layout_for(base.config)
    blocks = get_path(base, layout.blocks)
    n = len(blocks)
    check_site_name(base, site, "surgery.site")
    match = _SITE.match(site)
    mid_ok = layout.has_mid(base.config)
    if match is None or (match.group(2) == "residual_mid" and not mid_ok):
        kinds = ["residual_pre", "residual_post", "attn.q", "attn.k"] + (["residual_mid"] if mid_ok else [])
        raise StructuredConfigError(
            "surgery.site",
            f"unknown site '{site}' for {type(base).__name__} "
            f"({layout.name} layout); expected layers.{{0..{n - 1}}}.{{{','.join(kinds)}}}",
        )
    layer, kind = int(match.group(1)), match.group(2)
    if kind.startswith("attn."):
        return _qk_point(blocks[layer], layout, base.config, site, kind[-1])
    full = layer if kind == "residual_post" else layer - 1
    mid = kind == "residual_mid"
    parallel = layout.parallel_residual(base.config)
    writes: list = [(get_path(base, name), dim) for name, dim in layout.embeddings]
    reads: list = []
    for i in range(full + 1):
        writes += _writes(blocks[i], layout.attn_out) + _writes(blocks[i], layout.mlp_out)
    if mid:
        writes += _writes(blocks[layer], layout.attn_out)
    for i in range(full + 2):  # blocks 0..full read the span entirely; block full+1 with its attention at least
        if i >= n:
            reads += _reads(base, layout.final_norm, ())
            head = get_path(base, layout.head)
            reads.append((head.weight, 1))
            break
        reads += _reads(blocks[i], layout.attn_norm, layout.attn_in)
        if i <= full or mid or parallel:  # parallel blocks' MLP reads the block input too
            reads += _reads(blocks[i], layout.mlp_norm, layout.mlp_in)
    sites = (
        tuple(f"layers.{i}.residual_post" for i in range(full + 1))
        + (tuple(f"layers.{i}.residual_mid" for i in range(full + 1 + int(mid))) if mid_ok else ())
        + tuple(f"layers.{i}.residual_pre" for i in range(min(full + 2, n)))
    )
    prepare = None
    if layout.tied is not None and getattr(base.config, layout.tied[0], False) and full + 1 < n:
        prepare = _untie(layout)
    return SurgeryPoint(
        None,
        (),
        None,
        sites,
        width=base.config.hidden_size,
        writes=tuple(writes),
        axis_reads=tuple(reads),
        prepare=prepare,
        prune_error=f"'{site}' is a residual-stream site: pruning would change every norm's "
        "statistics and narrow the blocks after the site; use ablate instead",
    )


__all__ = ["FusedRows", "pretrained_surgery_point"]
