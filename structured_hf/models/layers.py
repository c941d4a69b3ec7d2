"""Building blocks shared by the transformer models: attention with query/key sites, the MLP, nGPT-style updates.

Module names (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``up``, ``down``) are checkpoint keys and surgery
addresses, so both transformers expose the same layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..sites import ActivationSite


# The per-block site names (``layers.{i}.<kind>``): the residual stream entering each block, between its attention
# and its MLP and leaving it, and the attention queries/keys. Surgery (interventions/residual.py) parses the same list.
TRANSFORMER_SITE_KINDS = ("residual_pre", "residual_mid", "residual_post", "attn.q", "attn.k")


def transformer_site_dims(num_layers: int, width: int) -> dict[str, int]:
    """The sites of a transformer with ``num_layers`` blocks (:data:`TRANSFORMER_SITE_KINDS` per block)."""
    return {f"layers.{i}.{name}": width for i in range(num_layers) for name in TRANSFORMER_SITE_KINDS}


class SiteAttention(nn.Module):
    """Multi-head attention whose queries and keys (before the head split) are the sites ``layers.{i}.attn.q/.k``.

    Args:
        width: model width D.
        num_heads: heads (must divide D).
        layer: block index, for the site names and the KV-cache slot.
        dropout: attention dropout (training only).
    """

    def __init__(self, width: int, num_heads: int, layer: int, dropout: float = 0.0):
        super().__init__()
        self.layer = layer
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.o_proj = nn.Linear(width, width)
        self.q_site = ActivationSite(f"layers.{layer}.attn.q", width)
        self.k_site = ActivationSite(f"layers.{layer}.attn.k", width)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False, cache=None
    ) -> torch.Tensor:
        """``x`` (B, T, D); ``mask`` boolean, broadcastable to (B, H, T, S); ``cache`` a transformers ``Cache``."""
        B, T, D = x.shape
        H = self.num_heads
        q = self.q_site(self.q_proj(x)).view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, d)
        k = self.k_site(self.k_proj(x)).view(B, T, H, D // H).transpose(1, 2)
        v = self.v_proj(x).view(B, T, H, D // H).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, self.layer)  # (B, H, S, d) with S = past + T
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal and mask is None, dropout_p=drop
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, D))


class SiteMLP(nn.Module):
    """``down(gelu(up(x)))`` with GELU's tanh approximation (GPT-2's ``gelu_new``)."""

    def __init__(self, width: int, intermediate: int):
        super().__init__()
        self.up = nn.Linear(width, intermediate)
        self.down = nn.Linear(intermediate, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))


def hypersphere_step(h: torch.Tensor, update: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """nGPT-style update on the unit sphere: ``normalize(h + α ⊙ (normalize(update) − h))``."""
    return F.normalize(h + alpha * (F.normalize(update, dim=-1) - h), dim=-1)
