"""Sites, interventions, exact deletion and the concept map on tiny random-weight Llama, GPT-2 and GPT-NeoX models
(built locally from configs: no download)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    OPTConfig,
)

import structured_hf
from structured_hf import StructuredConfigError
from structured_hf.layouts import layout_for, supported_model_types
from structured_hf.pretrained import detach_sites

VOCAB, WIDTH, BLOCKS = 96, 32, 3


def tiny_config(arch: str):
    if arch == "llama":  # grouped-query attention (2 KV heads for 4 query heads), tied embeddings
        return LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=WIDTH,
            intermediate_size=64,
            num_hidden_layers=BLOCKS,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    if arch == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=BLOCKS, n_head=4, n_positions=64)
    return GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=BLOCKS, num_attention_heads=4, intermediate_size=64
    )


def tiny_model(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch)).eval()
    # Random biases and norm gains (they initialise to 0/1), so deletion must clear them to be exact; weights 8x
    # their init std (0.02 gives near-uniform attention, where query/key edits hardly show).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
            else:
                p.mul_(8.0)
    return model


ARCHS = ["llama", "gpt2", "gpt_neox"]


def inputs(seed: int, batch: int = 3, length: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_sites_keep_the_forward_pass_and_the_state_dict(arch):
    model = tiny_model(arch)
    x = inputs(1)
    before = model(x).logits
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    assert structured_hf.attach_sites(model) is model
    assert set(model.state_dict()) == set(keys)
    assert torch.equal(model(x).logits, before)
    sites = structured_hf.site_dims(model)
    kinds = {"residual_pre", "residual_post", "attn.q", "attn.k"} | ({"residual_mid"} if arch != "gpt_neox" else set())
    assert set(sites) == {f"layers.{i}.{k}" for i in range(BLOCKS) for k in kinds}
    if arch == "llama":  # grouped-query attention: keys are num_key_value_heads * head_dim wide
        assert sites["layers.0.attn.k"] == 16 and sites["layers.0.attn.q"] == WIDTH
    # Reading every site changes nothing either.
    with structured_hf.capture(model, list(sites)) as acts:
        assert torch.equal(model(x).logits, before)
    assert all(a.shape[:2] == x.shape for a in acts.values())
    # The captured streams are the model's own hidden states (hidden_states[i + 1] leaves block i).
    hidden = model(x, output_hidden_states=True).hidden_states
    for i in range(BLOCKS - 1):  # the last one is after the final norm in transformers' output
        assert torch.equal(acts[f"layers.{i}.residual_post"], hidden[i + 1])
        assert torch.equal(acts[f"layers.{i}.residual_pre"], hidden[i])
    detach_sites(model)
    assert structured_hf.site_dims(model) == {}
    assert torch.equal(model(x).logits, before)


@pytest.mark.parametrize("arch", ARCHS)
def test_mid_and_qk_sites_are_what_the_block_computes(arch):
    model = structured_hf.attach_sites(tiny_model(arch))
    x = inputs(2)
    base = model(x).logits
    # Rewriting a site by the identity function (a new tensor with the same values) must not change the output:
    # the site really is the tensor the model goes on with.
    for site in ["layers.1.attn.q", "layers.1.attn.k", "layers.1.residual_pre", "layers.1.residual_post"] + (
        ["layers.1.residual_mid"] if arch != "gpt_neox" else []
    ):
        with structured_hf.rewrite(model, site, lambda t: t.clone()):
            torch.testing.assert_close(model(x).logits, base, rtol=0, atol=1e-6)
        with structured_hf.rewrite(model, site, lambda t: t * 5.0):
            assert (model(x).logits - base).abs().max() > 1e-3, site


@pytest.mark.parametrize("arch", ARCHS)
def test_suppress_by_concept_name_and_axes(arch):
    model = structured_hf.attach_sites(
        tiny_model(arch),
        concepts=[
            {"name": "c", "site": "layers.1.residual_post", "direction": [1.0] + [0.0] * (WIDTH - 1)},
            {"name": "c-axes", "site": "layers.1.residual_post", "axes": [0, 1]},
        ],
    )
    x = inputs(3)
    base = model(x).logits
    with structured_hf.suppress_axes(model, "c-axes"):
        with structured_hf.capture(model, ["layers.1.residual_post"]) as acts:
            zeroed = model(x).logits
    assert torch.all(acts["layers.1.residual_post"][..., [0, 1]] == 0)
    assert not torch.equal(zeroed, base)
    with structured_hf.suppress(model, "c"):
        with structured_hf.capture(model, ["layers.1.residual_post"]) as acts:
            model(x)
    assert torch.all(acts["layers.1.residual_post"][..., 0] <= 0)  # the positive hemisphere is removed
    assert torch.equal(model(x).logits, base)  # hooks are gone after the block


@pytest.mark.parametrize("arch", ARCHS)
def test_ablate_zeroes_the_reserved_axes_for_every_input(arch):
    model = structured_hf.attach_sites(
        tiny_model(arch),
        concepts=[
            {"name": "v", "site": "layers.1.residual_post", "axes": [0, 5, 7]},
            {"name": "other", "site": "layers.1.residual_post", "axes": [9]},
        ],
    )
    deleted = structured_hf.ablate(model, "v")
    assert [c["name"] for c in deleted.config.concepts] == ["other"]
    assert deleted.config.surgery[-1]["op"] == "ablate"
    sites = ["layers.1.residual_post", "layers.1.residual_pre", "layers.0.residual_pre"]
    for seed in range(4):  # several random batches, and random continuous input embeddings
        with structured_hf.capture(deleted, sites) as acts:
            deleted(inputs(10 + seed, batch=4, length=16))
        for site in sites:
            assert torch.all(acts[site][..., [0, 5, 7]] == 0), site
            assert acts[site][..., [1, 2, 3]].abs().max() > 0
    # The input model is unchanged (ablate returns a copy) and its sites still work.
    with structured_hf.capture(model, ["layers.1.residual_post"]) as acts:
        model(inputs(10))
    assert acts["layers.1.residual_post"][..., 0].abs().max() > 0
    # Deleting at a block before the last unties the tied embedding: the head keeps its values.
    if getattr(model.config, "tie_word_embeddings", False):
        assert deleted.config.tie_word_embeddings is False
        head = deleted.get_output_embeddings().weight
        assert head.data_ptr() != deleted.get_input_embeddings().weight.data_ptr()
        assert torch.equal(head, model.get_output_embeddings().weight)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "site", ["layers.2.residual_post", "layers.1.residual_mid", "layers.1.attn.q", "layers.2.attn.k"]
)
def test_ablate_other_sites(arch, site):
    model = structured_hf.attach_sites(tiny_model(arch))
    if site.endswith("residual_mid") and arch == "gpt_neox":
        with pytest.raises(StructuredConfigError, match="residual_mid"):
            structured_hf.ablate(model, axes=[1, 2], site=site)
        return
    deleted = structured_hf.ablate(model, axes=[1, 2], site=site)
    with structured_hf.capture(deleted, [site]) as acts:
        deleted(inputs(5))
    assert torch.all(acts[site][..., [1, 2]] == 0)
    assert acts[site][..., [0, 3]].abs().max() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_from_pretrained_round_trip(arch, tmp_path):
    concepts = [{"name": "v", "site": "layers.1.residual_post", "axes": [0, 1]}]
    model = structured_hf.attach_sites(tiny_model(arch), concepts=concepts)
    deleted = structured_hf.ablate(model, axes=[3], site="layers.0.residual_post")
    for name, m in (("plain", model), ("deleted", deleted)):
        folder = tmp_path / name
        m.save_pretrained(folder)
        saved = json.loads((folder / "config.json").read_text())
        assert saved["concepts"] == m.config.concepts
        loaded = structured_hf.attach_sites(AutoModelForCausalLM.from_pretrained(folder).eval())
        assert loaded.config.concepts == m.config.concepts
        x = inputs(7)
        assert torch.equal(loaded(x).logits, m(x).logits)
        with structured_hf.suppress_axes(loaded, "v"), structured_hf.suppress_axes(m, "v"):
            assert torch.equal(loaded(x).logits, m(x).logits)


def test_bad_input_errors():
    with pytest.raises(StructuredConfigError, match="'opt'"):
        structured_hf.attach_sites(
            AutoModelForCausalLM.from_config(
                OPTConfig(
                    vocab_size=VOCAB,
                    hidden_size=16,
                    num_hidden_layers=1,
                    ffn_dim=32,
                    num_attention_heads=2,
                    word_embed_proj_dim=16,
                )
            )
        )
    with pytest.raises(StructuredConfigError, match="supported"):
        layout_for(OPTConfig())
    assert {"llama", "mistral", "qwen2", "gpt2", "gpt_neox"} <= set(supported_model_types())
    model = tiny_model("llama")
    with pytest.raises(StructuredConfigError, match=r"block 7, past the last block: the model has 3 blocks"):
        structured_hf.attach_sites(model, concepts=[{"name": "v", "site": "layers.7.residual_post", "axes": [0]}])
    with pytest.raises(StructuredConfigError, match=r"has width 16 but site 'layers.1.residual_post' is 32 wide"):
        structured_hf.attach_sites(
            model, concepts=[{"name": "v", "site": "layers.1.residual_post", "direction": [1.0] * 16}]
        )
    with pytest.raises(StructuredConfigError, match="axis 40 is out of range"):
        structured_hf.attach_sites(model, concepts=[{"name": "v", "site": "layers.1.residual_post", "axes": [40]}])
    structured_hf.attach_sites(model)
    with pytest.raises(StructuredConfigError, match="unknown site .layers.3.residual_post."):
        structured_hf.ablate(model, axes=[0], site="layers.3.residual_post")
