"""What a layout declares: where the residual stream, attention queries/keys, writers and readers sit in one
third-party architecture (parameter and module paths, dotted, relative to the ``*ForCausalLM`` model or a block).

A layout is plain data plus two small functions for fused query/key/value projections; the site hooks
(:mod:`structured_hf.pretrained.sites`) and the exact deletion (:mod:`structured_hf.pretrained.surgery`) are written
once against it. Declaring a new architecture is one :func:`~structured_hf.layouts.register_layout` call with a
:class:`Layout` (see ``docs/pretrained.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Proj:
    """A projection by module path. ``conv1d``: GPT-2's ``Conv1D`` stores its weight as ``(in, out)``, transposed
    with respect to ``nn.Linear``'s ``(out, in)``, so the dimension that indexes the residual width flips."""

    path: str
    conv1d: bool = False

    @property
    def out_dim(self) -> int:
        """Weight dimension indexing the projection's outputs (a writer's residual axes)."""
        return 1 if self.conv1d else 0

    @property
    def in_dim(self) -> int:
        """Weight dimension indexing the projection's inputs (a reader's residual axes)."""
        return 0 if self.conv1d else 1


# ``split(output, config) -> (q, k)`` of a fused projection's output (..., 3·D') and the inverse ``merge(output, q,
# k, config) -> output`` with q, k replaced; ``rows(axes, config, which) -> output indices`` of q or k axes.
QKSplit = Callable[[torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor]]
QKMerge = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]
QKRows = Callable[[list[int], Any, str], list[int]]


@dataclass(frozen=True)
class FusedQKV:
    """A fused query/key/value projection: its path and how its output holds q and k."""

    proj: Proj
    split: QKSplit
    merge: QKMerge
    rows: QKRows


@dataclass(frozen=True)
class Layout:
    """Where the parts of one architecture are (all paths dotted; block paths relative to one block).

    Args:
        name: layout name (shown in errors and docs).
        model_types: the ``config.model_type`` values it covers.
        blocks: path of the ``ModuleList`` of decoder blocks (from the ``*ForCausalLM`` model).
        embeddings: ``(parameter path, dimension indexing the residual width)`` of every embedding write.
        final_norm: the norm before the output head.
        head: the output projection (an ``nn.Linear``; reads the final stream).
        attention: the block's attention module; element 0 of its output is what the block adds to the stream.
        attn_norm / mlp_norm: the norms in front of the attention and MLP sub-layers.
        attn_out / mlp_out: the projections writing the sub-layers' outputs into the stream.
        attn_in / mlp_in: the projections reading the normed stream (q/k/v or the fused qkv; MLP up/gate).
        query / key: separate query and key projections (their outputs are the ``attn.q`` / ``attn.k`` sites).
        fused_qkv: instead of ``query``/``key``, a fused projection and how to split it.
        parallel_residual: ``config -> bool``: attention and MLP both read the block input (GPT-NeoX, GPT-J);
            such blocks have no ``residual_mid`` site.
        tied: ``(config attribute, head parameter, embedding parameter)`` when the head can share the embedding.
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    embeddings: tuple[tuple[str, int], ...]
    final_norm: str
    head: str
    attention: str
    attn_norm: str
    mlp_norm: str
    attn_out: Proj
    mlp_out: Proj
    attn_in: tuple[Proj, ...]
    mlp_in: tuple[Proj, ...]
    query: Proj | None = None
    key: Proj | None = None
    fused_qkv: FusedQKV | None = None
    parallel_residual: Callable[[Any], bool] = field(default=lambda config: False)
    tied: tuple[str, str, str] | None = None

    def has_mid(self, config: Any) -> bool:
        """Whether blocks have a ``residual_mid`` site (the stream between attention and MLP)."""
        return not self.parallel_residual(config)


def get_path(root: Any, path: str) -> Any:
    """``root.a.b.c`` for ``path="a.b.c"`` (numeric parts index ModuleLists)."""
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


__all__ = ["FusedQKV", "Layout", "Proj", "get_path"]
