"""The color autoencoder: config validation, sizes, heads, sites, hooks and save/load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import structured_hf  # noqa: F401  (registers the Auto classes)
from structured_hf import (
    ColorAutoencoderConfig,
    ColorAutoencoderModel,
    StructuredConfigError,
    capture,
    get_sites,
    rewrite,
    site_dims,
)
from transformers import AutoConfig, AutoModel

CONCEPTS = [
    {"name": "red", "site": "bottleneck", "direction": [1.0, 0.0, 0.0, 0.0], "prototypes": ["red"]},
    {"name": "hue", "site": "bottleneck", "axes": [0, 1]},
]


def _model(seed: int = 0, **kwargs) -> ColorAutoencoderModel:
    torch.manual_seed(seed)
    return ColorAutoencoderModel(ColorAutoencoderConfig(**kwargs))


def _colors(n: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(1))


# ---- config -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"activation": "swish"}, r"model\.activation: expected one of .*'swish'"),
        ({"output_head": "linear"}, r"model\.output_head: expected one of .*'linear'"),
        ({"hidden_dim": 0}, r"model\.hidden_dim: expected a positive integer, got 0"),
        ({"hidden_dim": -3}, r"model\.hidden_dim: expected a positive integer"),
        ({"hidden_dim": 2.5}, r"model\.hidden_dim: expected a positive integer, got 2\.5"),
        ({"hidden_dim": True}, r"model\.hidden_dim: expected a positive integer, got True"),
        ({"bottleneck_dim": 0}, r"model\.bottleneck_dim: expected a positive integer"),
        ({"num_layers": 0}, r"model\.num_layers: expected a positive integer"),
        (
            {"concepts": [{"name": "red", "site": "bottleneck", "direction": [1.0, 0.0, 0.0]}]},
            r"concepts\[0\] \('red'\)\.direction: has length 3 but site 'bottleneck' has width 4",
        ),
        ({"bottleneck_dim": 5, "concepts": CONCEPTS[:1]}, r"\('red'\)\.direction: has length 4 .* width 5"),
        (
            {"concepts": [{"name": "red", "site": "residual", "direction": [1.0, 0.0, 0.0, 0.0]}]},
            r"concepts\[0\] \('red'\)\.site: unknown site 'residual'",
        ),
        (
            {"concepts": [{"name": "hue", "site": "bottleneck", "axes": [0, 4]}]},
            r"\('hue'\)\.axes: axis 4 is out of range",
        ),
        ({"concepts": [{"name": "red", "site": "bottleneck"}]}, r"exactly one of 'direction' or 'axes'"),
    ],
)
def test_config_validation_names_the_field(kwargs, pattern):
    # @strict wraps our StructuredConfigError into its own class-validation error; the message must still name the field
    with pytest.raises(Exception, match=pattern) as info:
        ColorAutoencoderConfig(**kwargs)
    chain = [info.value, info.value.__cause__]
    assert any(isinstance(e, StructuredConfigError) for e in chain)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize(
    "field, value", [("hidden_dim", 0), ("concepts", [{"name": "r", "site": "bottleneck", "direction": [1.0, 0.0]}])]
)
def test_invalid_values_assigned_after_construction_are_rejected(field, value):
    config = ColorAutoencoderConfig()
    with pytest.raises(Exception, match=field if field != "concepts" else "direction"):
        setattr(config, field, value)
        ColorAutoencoderModel(config)


def test_config_defaults_and_concepts():
    config = ColorAutoencoderConfig(concepts=CONCEPTS)
    assert (config.bottleneck_dim, config.hidden_dim, config.num_layers) == (4, 16, 1)
    assert config.activation == "gelu" and config.output_head == "clamp" and config.normalize_bottleneck
    assert config.model_type == "structured_color_autoencoder"
    assert ColorAutoencoderConfig().concepts == []
    model = ColorAutoencoderModel(config)
    assert model.concept_map.names == ["red", "hue"]
    assert model.concept_map["hue"].axes == (0, 1)


# ---- sizes ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, count",
    [
        ({"bottleneck_dim": 4, "hidden_dim": 16, "num_layers": 1}, 263),
        ({"bottleneck_dim": 5, "hidden_dim": 16, "num_layers": 2}, 840),
    ],
)
def test_parameter_counts(kwargs, count):
    assert sum(p.numel() for p in _model(**kwargs).parameters()) == count


def test_named_submodules():
    names = {n for n, _ in _model().named_parameters()}
    assert {"encoder.proj.weight", "decoder.proj.weight", "decoder.out.weight", "encoder.mlp.layers.0.weight"} <= names
    assert _model().encoder.proj.weight.shape == (4, 16)
    assert _model().decoder.proj.weight.shape == (16, 4)


# ---- forward ------------------------------------------------------------------------------------------------------
def test_normalize_bottleneck_gives_unit_latents():
    out = _model()(colors=_colors())
    assert out.latents.shape == (32, 4)
    torch.testing.assert_close(out.latents.norm(dim=-1), torch.ones(32))
    raw = _model(normalize_bottleneck=False)(colors=_colors()).latents
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(32), atol=1e-3)


def test_clamp_head_clamps_only_in_eval_mode():
    model = _model(output_head="clamp")
    with torch.no_grad():
        model.decoder.out.bias.copy_(torch.tensor([5.0, -5.0, 0.0]))  # push outputs outside [0, 1]
    x = _colors()
    model.train()
    train_out = model(colors=x).reconstruction
    assert train_out.shape == (32, 3)
    assert (train_out[:, 0] > 1.0).any() and (train_out[:, 1] < 0.0).any()
    model.eval()
    eval_out = model(colors=x).reconstruction
    assert eval_out.min() >= 0.0 and eval_out.max() <= 1.0
    torch.testing.assert_close(eval_out, train_out.clamp(0.0, 1.0))
    # inside the cube nothing changes
    assert torch.equal(eval_out[:, 2], train_out[:, 2].clamp(0.0, 1.0))


def test_sigmoid_head():
    model = _model(output_head="sigmoid")
    x = _colors()
    for training in (True, False):
        model.train(training)
        out = model(colors=x)
        expected = torch.sigmoid(model.decoder(out.latents))
        torch.testing.assert_close(out.reconstruction, expected)
        assert (out.reconstruction > 0).all() and (out.reconstruction < 1).all()


def test_loss_only_with_labels():
    model = _model()
    x = _colors()
    out = model(colors=x)
    assert out.loss is None
    out = model(colors=x, labels=x)
    assert out.loss is not None and out.loss.shape == ()
    torch.testing.assert_close(out.loss, ((out.reconstruction - x) ** 2).mean())


def test_bad_input_shape_names_the_argument():
    with pytest.raises(StructuredConfigError, match=r"colors: expected shape \(batch, 3\), got \(4, 4\)"):
        _model()(colors=torch.zeros(4, 4))


# ---- sites and hooks ----------------------------------------------------------------------------------------------
def test_sites():
    model = _model(bottleneck_dim=5, num_layers=2)
    sites = get_sites(model)
    assert set(sites) == {"encoder", "bottleneck"}
    assert sites["encoder"].width == 5 and sites["bottleneck"].width == 5
    assert site_dims(model) == {"encoder": 5, "bottleneck": 5}


def test_capture_records_and_removes_hooks():
    model = _model()
    sites = get_sites(model)
    x = _colors()
    with capture(model, ["encoder", "bottleneck"]) as acts:
        assert all(len(s._forward_hooks) == 1 for s in sites.values())
        out = model(colors=x)
    assert torch.equal(acts["bottleneck"], out.latents)
    assert acts["encoder"].shape == (32, 4)
    torch.testing.assert_close(acts["bottleneck"], torch.nn.functional.normalize(acts["encoder"], dim=-1))
    assert acts["bottleneck"].requires_grad  # graph kept: losses on captured activations train the model
    assert all(len(s._forward_hooks) == 0 for s in sites.values())


def test_capture_removes_hooks_when_the_block_raises():
    model = _model()
    sites = get_sites(model)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, ["encoder", "bottleneck"]):
            model(colors=_colors())
            raise RuntimeError("boom")
    assert all(len(s._forward_hooks) == 0 for s in sites.values())


def test_capture_unknown_site_lists_the_sites():
    model = _model()
    with pytest.raises(StructuredConfigError, match=r"unknown site 'residual'.*\['bottleneck', 'encoder'\]"):
        with capture(model, ["residual"]):
            pass
    assert all(len(s._forward_hooks) == 0 for s in get_sites(model).values())


def test_rewrite_changes_the_output_and_is_removed_after():
    model = _model().eval()
    x = _colors()
    base = model(colors=x)
    with rewrite(model, "bottleneck", lambda z: -z):
        flipped = model(colors=x)
    torch.testing.assert_close(flipped.latents, -base.latents)
    assert not torch.allclose(flipped.reconstruction, base.reconstruction)
    torch.testing.assert_close(flipped.reconstruction, model.decode(-base.latents))
    assert len(get_sites(model)["bottleneck"]._forward_hooks) == 0
    assert torch.equal(model(colors=x).reconstruction, base.reconstruction)


def test_rewrite_is_removed_when_the_block_raises():
    model = _model()
    with pytest.raises(ValueError):
        with rewrite(model, "encoder", torch.zeros_like):
            raise ValueError("inside")
    assert len(get_sites(model)["encoder"]._forward_hooks) == 0


# ---- save / load --------------------------------------------------------------------------------------------------
def test_save_and_auto_load_round_trip(tmp_path):
    model = _model(seed=3, concepts=CONCEPTS).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ColorAutoencoderConfig)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is ColorAutoencoderModel
    loaded.eval()
    x = _colors(64)
    assert torch.equal(loaded(colors=x).reconstruction, model(colors=x).reconstruction)
    assert loaded.concept_map.to_list() == model.concept_map.to_list()
    assert loaded.config.output_head == "clamp" and loaded.config.bottleneck_dim == 4
    for (name, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("corrupt", ["truncate", "garbage", "empty"])
def test_corrupted_safetensors_raises(tmp_path, corrupt):
    _model().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"not a safetensors file" * 8, "empty": b""}[corrupt]
    )
    with pytest.raises(Exception) as info:
        AutoModel.from_pretrained(tmp_path)
    assert str(info.value).strip()


def test_checkpoint_missing_a_tensor_raises(tmp_path):
    _model().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(path)
    del state["decoder.out.weight"]
    save_file(state, path, metadata={"format": "pt"})
    from structured_hf import CheckpointError

    with pytest.raises(CheckpointError, match="decoder.out.weight"):
        AutoModel.from_pretrained(tmp_path)
