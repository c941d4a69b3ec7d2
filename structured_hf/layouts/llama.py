"""The Llama family (Llama, Mistral, Qwen2; SmolLM is a Llama): RMSNorm, separate q/k/v projections, grouped-query
attention (the key site is ``num_key_value_heads · head_dim`` wide), SiLU-gated MLP, optionally tied embeddings.

RMSNorm has no mean and no bias, so zeroing a residual axis and the norms' gains on it deletes the axis exactly.
"""

from .base import Layout, Proj
from .registry import register_layout

LLAMA = register_layout(
    Layout(
        name="llama",
        model_types=("llama", "mistral", "qwen2"),
        blocks="model.layers",
        embeddings=(("model.embed_tokens.weight", 1),),
        final_norm="model.norm",
        head="lm_head",
        attention="self_attn",
        attn_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",
        attn_out=Proj("self_attn.o_proj"),
        mlp_out=Proj("mlp.down_proj"),
        attn_in=(Proj("self_attn.q_proj"), Proj("self_attn.k_proj"), Proj("self_attn.v_proj")),
        mlp_in=(Proj("mlp.gate_proj"), Proj("mlp.up_proj")),
        query=Proj("self_attn.q_proj"),
        key=Proj("self_attn.k_proj"),
        tied=("tie_word_embeddings", "lm_head.weight", "model.embed_tokens.weight"),
    )
)
