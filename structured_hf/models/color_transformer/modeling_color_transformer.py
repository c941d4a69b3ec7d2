"""A small transformer that computes color operations (M3), with named sites for anchoring and interventions.

    tokens (B, 4, D): [op embedding, color_embed(a), color_embed(b), result query] + slot embeddings
    -> num_layers blocks; each block i has sites
         layers.{i}.residual_pre  (B, 4, D)  the stream entering the block
         layers.{i}.attn.q/.k     (B, 4, D)  queries and keys before the head split
         layers.{i}.residual_mid  (B, 4, D)  after the block's attention, what its MLP reads
         layers.{i}.residual_post (B, 4, D)  the stream leaving the block
    -> final norm -> head(result query) -> RGB (B, 3)

Attention is bidirectional (the task is a set function of its operands); a missing second operand is masked out
of the keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from ...errors import StructuredConfigError
from ...sites import ActivationSite
from ..base import StructuredPreTrainedModel
from ..layers import SiteAttention, SiteMLP, hypersphere_step
from .configuration_color_transformer import SEQUENCE_LENGTH, ColorTransformerConfig


@dataclass
class ColorTransformerOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): MSE of the result color, when `labels` are given.
        prediction (`torch.FloatTensor` of shape `(B, 3)`): predicted result RGB (clamped to [0, 1] in eval mode).
        last_hidden_state (`torch.FloatTensor` of shape `(B, 4, D)`).
    """

    loss: torch.FloatTensor | None = None
    prediction: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


class ColorTransformerBlock(nn.Module):
    """Pre-norm block, or an nGPT-style hypersphere block (``h ← normalize(h + α ⊙ (normalize(f(h)) − h))``)."""

    def __init__(self, config: ColorTransformerConfig, layer: int):
        super().__init__()
        d = config.hidden_size
        self.hypersphere = config.norm == "hypersphere"
        self.residual_pre = ActivationSite(f"layers.{layer}.residual_pre", d)
        self.attn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.attn = SiteAttention(d, config.num_heads, layer)
        self.mlp_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.mlp = SiteMLP(d, config.intermediate_size)
        if self.hypersphere:
            # Learned per-dimension step sizes ("eigen learning rates" of nGPT), small at init.
            self.attn_alpha = nn.Parameter(torch.full((d,), 0.05))
            self.mlp_alpha = nn.Parameter(torch.full((d,), 0.05))
        self.residual_mid = ActivationSite(f"layers.{layer}.residual_mid", d)
        self.residual_post = ActivationSite(f"layers.{layer}.residual_post", d)

    def forward(self, h: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        h = self.residual_pre(h)
        mask = key_mask[:, None, None, :]  # (B, 1, 1, 4): every query may see every present token
        if self.hypersphere:
            h = self.residual_mid(hypersphere_step(h, self.attn(h, mask), self.attn_alpha))
            h = hypersphere_step(h, self.mlp(h), self.mlp_alpha)
        else:
            h = self.residual_mid(h + self.attn(self.attn_norm(h), mask))
            h = h + self.mlp(self.mlp_norm(h))
        return self.residual_post(h)


class ColorTransformerPreTrainedModel(StructuredPreTrainedModel):
    config_class = ColorTransformerConfig
    base_model_prefix = "color_transformer"
    main_input_name = "colors"
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ColorTransformerModel):
            from transformers import initialization as init

            init.normal_(module.query, std=0.02)
            init.normal_(module.slot_embed, std=0.02)
        if isinstance(module, ColorTransformerBlock) and module.hypersphere:
            from transformers import initialization as init

            init.constant_(module.attn_alpha, 0.05)
            init.constant_(module.mlp_alpha, 0.05)


class ColorTransformerModel(ColorTransformerPreTrainedModel):
    """Color-operation transformer; see the module docstring for the sequence layout and the sites."""

    def __init__(self, config: ColorTransformerConfig):
        super().__init__(config)
        d = config.hidden_size
        self.op_embed = nn.Embedding(len(config.operations), d)
        self.color_embed = nn.Linear(3, d)
        self.slot_embed = nn.Parameter(torch.zeros(SEQUENCE_LENGTH, d))
        self.query = nn.Parameter(torch.zeros(d))
        self.layers = nn.ModuleList(ColorTransformerBlock(config, i) for i in range(config.num_layers))
        self.final_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.head = nn.Linear(d, 3)
        self.post_init()

    def embed(self, op_ids: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
        B = op_ids.shape[0]
        tokens = torch.cat(
            [
                self.op_embed(op_ids)[:, None],  # (B, 1, D)
                self.color_embed(colors),  # (B, 2, D)
                self.query.expand(B, 1, -1),  # (B, 1, D)
            ],
            dim=1,
        )
        h = tokens + self.slot_embed
        return F.normalize(h, dim=-1) if self.config.norm == "hypersphere" else h

    def forward(
        self,
        op_ids: torch.Tensor,
        colors: torch.Tensor,
        operand_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> ColorTransformerOutput:
        """
        Args:
            op_ids (`torch.LongTensor` of shape `(B,)`): operation index into `config.operations`.
            colors (`torch.FloatTensor` of shape `(B, 2, 3)`): operands (the second is ignored for unary ops).
            operand_mask (`torch.FloatTensor` of shape `(B, 2)`, *optional*): 1 for present operands.
            labels (`torch.FloatTensor` of shape `(B, 3)`, *optional*): the result color; gives `loss` (MSE).
        """
        if colors.ndim != 3 or colors.shape[1:] != (2, 3):
            raise StructuredConfigError("colors", f"expected shape (batch, 2, 3), got {tuple(colors.shape)}")
        if op_ids.min() < 0 or op_ids.max() >= len(self.config.operations):
            raise StructuredConfigError("op_ids", f"operation ids must be in [0, {len(self.config.operations)})")
        B = op_ids.shape[0]
        if operand_mask is None:
            operand_mask = torch.ones(B, 2, device=colors.device)
        ones = torch.ones(B, 1, device=colors.device, dtype=torch.bool)
        key_mask = torch.cat([ones, operand_mask.bool(), ones], dim=1)  # (B, 4): who may be attended to
        h = self.embed(op_ids, colors)
        for block in self.layers:
            h = block(h, key_mask)
        h = self.final_norm(h)
        out = self.head(h[:, -1])  # (B, 3) read at the result query
        prediction = out if self.training else out.clamp(0.0, 1.0)
        loss = F.mse_loss(out, labels) if labels is not None else None
        return ColorTransformerOutput(loss=loss, prediction=prediction, last_hidden_state=h)


__all__ = ["ColorTransformerModel", "ColorTransformerOutput", "ColorTransformerPreTrainedModel"]
