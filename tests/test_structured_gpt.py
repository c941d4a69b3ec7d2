"""StructuredGPT: equal to GPT-2 when configured alike, generation with a KV cache, padding, sites, round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import structured_hf  # noqa: F401
from structured_hf.models import StructuredGPTConfig, StructuredGPTForCausalLM
from structured_hf.models.structured_gpt.convert import to_gpt2
from structured_hf.sites import capture, site_dims


def _model(**kw) -> StructuredGPTForCausalLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, max_position_embeddings=32, hidden_size=16, num_layers=2, num_heads=2)
    cfg.update(kw)
    return StructuredGPTForCausalLM(StructuredGPTConfig(**cfg)).eval()


def test_logits_equal_gpt2_with_copied_weights():
    m = _model()
    g = to_gpt2(m).eval()
    x = torch.randint(0, 50, (3, 12))
    ours, theirs = m(x).logits, g(x).logits
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    # The loss is next-token cross-entropy, as GPT-2's.
    assert m(x, labels=x).loss.item() == pytest.approx(g(x, labels=x).loss.item(), rel=1e-5)
    assert m(x, labels=x).loss.item() == pytest.approx(
        F.cross_entropy(ours[:, :-1].reshape(-1, 50), x[:, 1:].reshape(-1)).item(), rel=1e-6
    )


def test_generate_uses_the_kv_cache_and_matches_full_recompute():
    m = _model()
    x = torch.randint(1, 50, (2, 5))
    lengths = []
    handle = m.wte.register_forward_hook(lambda mod, inp, out: lengths.append(inp[0].shape[1]))
    try:
        cached = m.generate(x, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    finally:
        handle.remove()
    assert lengths[0] == 5 and set(lengths[1:]) == {1}, "after the prompt, one new token per step"
    full = m.generate(x, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, full) and cached.shape == (2, 11)


def test_left_padding_does_not_change_the_continuation():
    m = _model()
    short = torch.randint(1, 50, (1, 3))
    alone = m.generate(short, max_new_tokens=4, do_sample=False, pad_token_id=0)
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), short], 1)
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    together = m.generate(padded, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(together[:, 2:], alone)


def test_sites_and_hypersphere_variant():
    m = _model(norm="hypersphere")
    assert site_dims(m)["layers.1.attn.k"] == 16
    with capture(m, ["layers.0.residual_post", "layers.1.attn.q"]) as acts:
        logits = m(torch.randint(0, 50, (2, 7))).logits
    assert torch.isfinite(logits).all()
    assert torch.allclose(acts["layers.0.residual_post"].norm(dim=-1), torch.ones(2, 7), atol=1e-5)
    assert acts["layers.1.attn.q"].shape == (2, 7, 16)


def test_round_trip_and_errors(tmp_path):
    m = _model()
    x = torch.randint(0, 50, (2, 8))
    m.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is StructuredGPTForCausalLM and torch.equal(loaded(x).logits, m(x).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.wte.weight.data_ptr(), "embeddings stay tied"
    with pytest.raises(Exception, match="max_position_embeddings"):
        m(torch.zeros(1, 40, dtype=torch.long))
    with pytest.raises(Exception, match="num_heads"):
        StructuredGPTConfig(hidden_size=10, num_heads=4)
