"""StructuredGPT: a GPT-2-style causal LM whose residual stream and attention queries/keys are named sites.

    input_ids (B, T) -> wte + wpe -> num_layers blocks -> ln_f -> lm_head (tied to wte) -> logits (B, T, V)

Block i (pre-norm, as GPT-2):
    layers.{i}.residual_pre  (B, T, D)
    h = h + attn(ln_1(h))        queries/keys at layers.{i}.attn.q / .k (B, T, D), before the head split
    layers.{i}.residual_mid  (B, T, D)  what the MLP reads: the stream after the block's attention
    h = h + mlp(ln_2(h))         GELU (tanh approximation, GPT-2's "gelu_new")
    layers.{i}.residual_post (B, T, D)

With ``norm: hypersphere`` the stream is kept on the unit sphere (nGPT-style): each sub-block moves it by a learned
per-dimension step towards the normalized sub-block output, and the logits are scaled by a learned factor.
KV caching uses transformers' ``DynamicCache``, so ``generate`` works as for any causal LM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from ...errors import StructuredConfigError
from ...sites import ActivationSite
from ..base import StructuredPreTrainedModel
from ..layers import SiteAttention, SiteMLP, hypersphere_step
from .configuration_structured_gpt import StructuredGPTConfig


class GPTBlock(nn.Module):
    def __init__(self, config: StructuredGPTConfig, layer: int):
        super().__init__()
        d = config.hidden_size
        self.hypersphere = config.norm == "hypersphere"
        self.residual_pre = ActivationSite(f"layers.{layer}.residual_pre", d)
        self.ln_1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.attn = SiteAttention(d, config.num_heads, layer, config.dropout)
        self.ln_2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.mlp = SiteMLP(d, config.intermediate_size)
        self.drop = nn.Dropout(config.dropout)
        if self.hypersphere:
            self.attn_alpha = nn.Parameter(torch.full((d,), 0.05))
            self.mlp_alpha = nn.Parameter(torch.full((d,), 0.05))
        self.residual_mid = ActivationSite(f"layers.{layer}.residual_mid", d)
        self.residual_post = ActivationSite(f"layers.{layer}.residual_post", d)

    def forward(self, h: torch.Tensor, cache: Cache | None, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.residual_pre(h)
        if self.hypersphere:
            h = self.residual_mid(hypersphere_step(h, self.attn(h, mask, is_causal=True, cache=cache), self.attn_alpha))
            h = hypersphere_step(h, self.mlp(h), self.mlp_alpha)
        else:
            h = self.residual_mid(h + self.drop(self.attn(self.ln_1(h), mask, is_causal=True, cache=cache)))
            h = h + self.drop(self.mlp(self.ln_2(h)))
        return self.residual_post(h)


class StructuredGPTPreTrainedModel(StructuredPreTrainedModel):
    config_class = StructuredGPTConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _no_split_modules = ["GPTBlock"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # GPT-2's N(0, 0.02) for Linear/Embedding, ones/zeros for LayerNorm
        if isinstance(module, GPTBlock):
            # GPT-2: scale the residual projections by 1/sqrt(2·layers) so the stream's variance does not grow.
            std = self.config.initializer_range / math.sqrt(2 * self.config.num_layers)
            init.normal_(module.attn.o_proj.weight, std=std)
            init.normal_(module.mlp.down.weight, std=std)
            if module.hypersphere:
                init.constant_(module.attn_alpha, 0.05)
                init.constant_(module.mlp_alpha, 0.05)
        if isinstance(module, StructuredGPTForCausalLM) and module.config.norm == "hypersphere":
            init.constant_(module.logit_scale, math.sqrt(module.config.hidden_size))


class StructuredGPTForCausalLM(StructuredGPTPreTrainedModel, GenerationMixin):
    """Causal LM with named sites; ``generate`` works with a KV cache."""

    _tied_weights_keys = {"lm_head.weight": "wte.weight"}

    def __init__(self, config: StructuredGPTConfig):
        super().__init__(config)
        d = config.hidden_size
        self.wte = nn.Embedding(config.vocab_size, d)
        self.wpe = nn.Embedding(config.max_position_embeddings, d)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(GPTBlock(config, i) for i in range(config.num_layers))
        self.ln_f = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        if config.norm == "hypersphere":
            self.logit_scale = nn.Parameter(torch.tensor(math.sqrt(d)))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def _attention_mask(
        self, attention_mask: torch.Tensor | None, T: int, past: int, device: torch.device
    ) -> torch.Tensor | None:
        """Boolean (B, 1, T, S) mask: causal with the past offset, and padding from a 2-D ``attention_mask``."""
        if attention_mask is None and past == 0:
            return None
        S = past + T
        causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=past)  # (T, S)
        mask = causal[None, None]
        if attention_mask is not None:
            if attention_mask.shape[-1] != S:
                raise StructuredConfigError(
                    "attention_mask", f"expected {S} columns (past + new tokens), got {attention_mask.shape[-1]}"
                )
            keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
            mask = mask & keys
            # A query that sees no real token (a left-padding position) would give NaN: let it attend causally
            # as if unpadded; its output is never used.
            rows_empty = ~mask.any(-1, keepdim=True)
            mask = mask | (rows_empty & causal[None, None])
        return mask

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """
        Args:
            input_ids (`torch.LongTensor` of shape `(B, T)`).
            attention_mask (`torch.Tensor` of shape `(B, past + T)`, *optional*): 1 for real tokens, 0 for padding.
            position_ids (`torch.LongTensor` of shape `(B, T)`, *optional*): derived from the mask (or the cache
                length) when missing.
            cache (`Cache`, *optional*): KV cache (transformers 5 name of `past_key_values`); a `DynamicCache` is
                created in eval mode when `use_cache`.
            labels (`torch.LongTensor` of shape `(B, T)`, *optional*): next-token targets (shifted inside);
                -100 is ignored. Gives `loss` (mean cross-entropy over predicted tokens).
            logits_to_keep (`int`): compute logits for the last N positions only (0: all), as generation asks.
        """
        B, T = input_ids.shape
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if "past_key_values" in kwargs:  # the pre-5 name
            cache = kwargs.pop("past_key_values") if cache is None else cache
        if use_cache and cache is None and not self.training:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        if past + T > self.config.max_position_embeddings:
            raise StructuredConfigError(
                "input_ids",
                f"sequence of {past + T} tokens exceeds max_position_embeddings {self.config.max_position_embeddings}",
            )
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, past:]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device)[None].expand(B, T)
        h = self.drop(self.wte(input_ids) + self.wpe(position_ids))  # (B, T, D)
        if self.config.norm == "hypersphere":
            h = F.normalize(h, dim=-1)
        mask = self._attention_mask(attention_mask, T, past, input_ids.device)
        for block in self.layers:
            h = block(h, cache if use_cache or past else None, mask)
        h = self.ln_f(h) if self.config.norm == "pre" else h
        keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        logits = self.lm_head(h[:, keep])  # (B, T', V)
        if self.config.norm == "hypersphere":
            logits = logits * self.logit_scale / self.wte.weight.norm(dim=-1).clamp_min(1e-6)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache if use_cache else None)


__all__ = ["StructuredGPTForCausalLM", "StructuredGPTPreTrainedModel"]
