"""GPT-NeoX (Pythia): parallel residual by default (``h + attn(ln1(h)) + mlp(ln2(h))``: no stream between the
two sub-layers, so no ``residual_mid`` site), LayerNorms with bias, and one fused ``query_key_value`` whose output is
laid out *per head* as ``[q_h (d) | k_h (d) | v_h (d)]`` for each head ``h``; output head ``lm_head`` (``embed_out`` before transformers 5), untied by default."""

from __future__ import annotations

from typing import Any

import torch

from .base import FusedQKV, Layout, Proj
from .registry import register_layout


def _heads(config: Any) -> tuple[int, int]:
    heads = config.num_attention_heads
    return heads, config.hidden_size // heads


def _split(out: torch.Tensor, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    h, d = _heads(config)
    per_head = out.unflatten(-1, (h, 3 * d))  # (..., H, 3d)
    return per_head[..., :d].flatten(-2), per_head[..., d : 2 * d].flatten(-2)  # (..., H·d) each


def _merge(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, config: Any) -> torch.Tensor:
    h, d = _heads(config)
    per_head = out.unflatten(-1, (h, 3 * d))
    return torch.cat([q.unflatten(-1, (h, d)), k.unflatten(-1, (h, d)), per_head[..., 2 * d :]], dim=-1).flatten(-2)


def _rows(axes: list[int], config: Any, which: str) -> list[int]:
    _, d = _heads(config)
    offset = 0 if which == "q" else d
    return [(a // d) * 3 * d + offset + a % d for a in axes]


GPT_NEOX = register_layout(
    Layout(
        name="gpt_neox",
        model_types=("gpt_neox",),
        blocks="gpt_neox.layers",
        embeddings=(("gpt_neox.embed_in.weight", 1),),
        final_norm="gpt_neox.final_layer_norm",
        head="lm_head",
        attention="attention",
        attn_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",
        attn_out=Proj("attention.dense"),
        mlp_out=Proj("mlp.dense_4h_to_h"),
        attn_in=(Proj("attention.query_key_value"),),
        mlp_in=(Proj("mlp.dense_h_to_4h"),),
        fused_qkv=FusedQKV(Proj("attention.query_key_value"), _split, _merge, _rows),
        # Non-parallel GPT-NeoX adds a dropout outside the attention module before the residual add, so the stream
        # between the sub-layers is not observable from module outputs: no residual_mid site either way.
        parallel_residual=lambda config: True,
        tied=("tie_word_embeddings", "lm_head.weight", "gpt_neox.embed_in.weight"),
    )
)
