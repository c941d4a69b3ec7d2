"""GPT-2: ``Conv1D`` projections (weights stored ``(in, out)``), one fused ``c_attn`` for q, k, v laid out as
``[q (D) | k (D) | v (D)]``, LayerNorms with bias, learned positions, tied embeddings."""

from __future__ import annotations

from typing import Any

import torch

from .base import FusedQKV, Layout, Proj
from .registry import register_layout


def _split(out: torch.Tensor, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    d = config.hidden_size
    return out[..., :d], out[..., d : 2 * d]


def _merge(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, config: Any) -> torch.Tensor:
    return torch.cat([q, k, out[..., 2 * config.hidden_size :]], dim=-1)


def _rows(axes: list[int], config: Any, which: str) -> list[int]:
    offset = 0 if which == "q" else config.hidden_size
    return [offset + a for a in axes]


GPT2 = register_layout(
    Layout(
        name="gpt2",
        model_types=("gpt2",),
        blocks="transformer.h",
        embeddings=(("transformer.wte.weight", 1), ("transformer.wpe.weight", 1)),
        final_norm="transformer.ln_f",
        head="lm_head",
        attention="attn",
        attn_norm="ln_1",
        mlp_norm="ln_2",
        attn_out=Proj("attn.c_proj", conv1d=True),
        mlp_out=Proj("mlp.c_proj", conv1d=True),
        attn_in=(Proj("attn.c_attn", conv1d=True),),
        mlp_in=(Proj("mlp.c_fc", conv1d=True),),
        fused_qkv=FusedQKV(Proj("attn.c_attn", conv1d=True), _split, _merge, _rows),
        tied=("tie_word_embeddings", "lm_head.weight", "transformer.wte.weight"),
    )
)
