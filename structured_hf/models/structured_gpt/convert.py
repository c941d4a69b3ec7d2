"""StructuredGPT -> transformers' GPT-2, for checking our model against the reference implementation and for
side-by-side benchmarks (``scripts/benchmark.py``, ``tests/test_structured_gpt.py``)."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ...errors import StructuredConfigError
from .modeling_structured_gpt import StructuredGPTForCausalLM


def to_gpt2(model: StructuredGPTForCausalLM) -> GPT2LMHeadModel:
    """transformers' ``GPT2LMHeadModel`` of the same size (tanh GELU, no dropout, tied embeddings) holding
    ``model``'s weights, so that both compute the same logits and start training from the same point.

    GPT-2's ``Conv1D`` stores weights transposed and fuses the q, k, v projections; only the pre-LayerNorm layout
    has a GPT-2 equivalent.
    """
    c = model.config
    if c.norm != "pre":
        raise StructuredConfigError("model.norm", f"only norm 'pre' has a GPT-2 equivalent, got {c.norm!r}")
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=c.vocab_size,
            n_positions=c.max_position_embeddings,
            n_embd=c.hidden_size,
            n_layer=c.num_layers,
            n_head=c.num_heads,
            n_inner=c.intermediate_size,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            layer_norm_epsilon=c.layer_norm_eps,
            tie_word_embeddings=True,
            bos_token_id=c.bos_token_id,
            eos_token_id=c.eos_token_id,
        )
    )
    sd = {
        "transformer.wte.weight": model.wte.weight,
        "transformer.wpe.weight": model.wpe.weight,
        "transformer.ln_f.weight": model.ln_f.weight,
        "transformer.ln_f.bias": model.ln_f.bias,
        "lm_head.weight": model.lm_head.weight,
    }
    for i, b in enumerate(model.layers):
        p = f"transformer.h.{i}."
        sd |= {
            p + "ln_1.weight": b.ln_1.weight,
            p + "ln_1.bias": b.ln_1.bias,
            p + "ln_2.weight": b.ln_2.weight,
            p + "ln_2.bias": b.ln_2.bias,
            p + "attn.c_attn.weight": torch.cat([b.attn.q_proj.weight, b.attn.k_proj.weight, b.attn.v_proj.weight]).T,
            p + "attn.c_attn.bias": torch.cat([b.attn.q_proj.bias, b.attn.k_proj.bias, b.attn.v_proj.bias]),
            p + "attn.c_proj.weight": b.attn.o_proj.weight.T,
            p + "attn.c_proj.bias": b.attn.o_proj.bias,
            p + "mlp.c_fc.weight": b.mlp.up.weight.T,
            p + "mlp.c_fc.bias": b.mlp.up.bias,
            p + "mlp.c_proj.weight": b.mlp.down.weight.T,
            p + "mlp.c_proj.bias": b.mlp.down.bias,
        }
    result = gpt2.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    # GPT-2 keeps its causal mask as non-persistent buffers (attn.bias / masked_bias): the only keys we do not set.
    if result.unexpected_keys or any("attn.bias" not in k and "masked_bias" not in k for k in result.missing_keys):
        raise RuntimeError(f"GPT-2 weight copy failed: {result}")
    return gpt2


__all__ = ["to_gpt2"]
