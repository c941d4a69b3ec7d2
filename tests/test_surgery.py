"""Surgery: ablate and prune agree, configs/concept maps/weights agree, round trips through save/from_pretrained,
post-hoc projection, and healing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel

import structured_hf  # noqa: F401
from structured_hf import ColorAutoencoderConfig, ColorAutoencoderModel, ConceptMap, StructuredConfigError, site_dims
from structured_hf.data import NAMED_COLORS, rgb_grid
from structured_hf.evaluation import reconstruct, site_activations
from structured_hf.interventions import (
    SurgerySpec,
    ablate,
    apply_surgery,
    heal,
    intervene,
    project_out,
    prune,
    remap_concepts,
)
from structured_hf.interventions.suppression import concept_suppressor

CONCEPTS = [
    {"name": "red", "site": "bottleneck", "direction": [1.0, 0.0, 0.0, 0.0, 0.0], "prototypes": ["red"]},
    {"name": "reserved", "site": "bottleneck", "axes": [0]},
    {"name": "hue", "site": "bottleneck", "axes": [0, 1]},
    {"name": "light", "site": "encoder", "axes": [2, 3]},
    {"name": "blueish", "site": "bottleneck", "direction": [0.0, 0.0, 0.0, 2.0, 0.5]},
]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ColorAutoencoderModel(
        ColorAutoencoderConfig(bottleneck_dim=5, hidden_dim=8, num_layers=2, concepts=CONCEPTS)
    ).eval()


def _colors():
    return np.concatenate([rgb_grid(6), np.asarray(list(NAMED_COLORS.values()))])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_ablate_and_prune_agree_per_color(model):
    colors = _colors()
    before = _state(model)
    ablated, pruned = ablate(model, "red"), prune(model, "red")
    a, p = reconstruct(ablated, colors), reconstruct(pruned, colors)
    assert np.abs(a - p).max() < 1e-6
    mse_a, mse_p = ((a - colors) ** 2).mean(-1), ((p - colors) ** 2).mean(-1)
    assert np.abs(mse_a - mse_p).max() < 1e-6
    # Deletion really changed the model (the agreement is not between two copies of the original).
    assert np.abs(a - reconstruct(model, colors)).max() > 1e-3
    # The input model is untouched.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_ablation_zeroes_rows_and_columns(model):
    ablated = ablate(model, axes=[1, 3])
    for axis in (1, 3):
        assert torch.all(ablated.encoder.proj.weight[axis] == 0) and ablated.encoder.proj.bias[axis] == 0
        assert torch.all(ablated.decoder.proj.weight[:, axis] == 0)
    assert torch.equal(ablated.encoder.proj.weight[0], model.encoder.proj.weight[0])
    # The bottleneck of an ablated model has exact zeros on those axes for every input.
    z = site_activations(ablated, _colors(), "bottleneck")
    assert np.all(z[:, [1, 3]] == 0)
    assert ablated.config.bottleneck_dim == 5


def test_prune_shrinks_width_and_reindexes_concepts(model):
    pruned = prune(model, "red")
    assert pruned.config.bottleneck_dim == 4
    assert pruned.encoder.proj.weight.shape == (4, 8) and pruned.decoder.proj.weight.shape == (8, 4)
    assert site_dims(pruned) == {"encoder": 4, "bottleneck": 4}
    assert torch.equal(pruned.encoder.proj.weight, model.encoder.proj.weight[1:])
    assert torch.equal(pruned.decoder.proj.weight, model.decoder.proj.weight[:, 1:])
    concepts = {c["name"]: c for c in pruned.config.concepts}
    assert set(concepts) == {"hue", "light", "blueish"}  # red and reserved lived only on axis 0
    assert concepts["hue"]["axes"] == [0]
    assert concepts["light"]["axes"] == [1, 2]  # encoder-site concepts share the axes and are re-indexed too
    assert concepts["blueish"]["direction"] == [0.0, 0.0, 2.0, 0.5]
    record = pruned.config.surgery[-1]
    assert record["op"] == "prune" and record["axes"] == [0] and record["width"] == 5
    assert sorted(record["removed_concepts"]) == ["red", "reserved"] and record["modified_concepts"] == ["hue"]
    ConceptMap.parse(pruned.config.concepts).validate(site_dims(pruned))


def test_direction_concept_uses_its_nonzero_axes(model):
    pruned = prune(model, "blueish")  # direction [0, 0, 0, 2, 0.5]: axes 3 and 4
    assert pruned.config.bottleneck_dim == 3
    assert pruned.config.surgery[-1]["axes"] == [3, 4]
    assert {c["name"] for c in pruned.config.concepts} == {"red", "reserved", "hue", "light"}
    assert {c["name"]: c for c in pruned.config.concepts}["light"]["axes"] == [2]


@pytest.mark.parametrize("op", [prune, ablate])
def test_surgery_round_trips_through_save_and_from_pretrained(model, op, tmp_path):
    new = op(model, "red")
    new.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is ColorAutoencoderModel
    assert loaded.config.bottleneck_dim == new.config.bottleneck_dim
    assert loaded.config.concepts == new.config.concepts
    assert loaded.config.surgery == new.config.surgery
    colors = _colors()
    assert np.array_equal(reconstruct(loaded, colors), reconstruct(new, colors))
    # Surgery composes: a second deletion on the reloaded model keeps the history.
    again = prune(loaded, "hue")
    assert [r["op"] for r in again.config.surgery] == [op.__name__, "prune"]


def test_remap_concepts_hand_example():
    concepts = ConceptMap.parse(
        [
            {"name": "a", "site": "s", "direction": [1.0, 2.0, 0.0]},
            {"name": "b", "site": "s", "axes": [1, 2]},
            {"name": "c", "site": "other", "axes": [0]},
        ]
    )
    entries, dropped, modified = remap_concepts(concepts, ["s"], [1], 3, shrink=True)
    assert entries == [
        {"name": "a", "site": "s", "direction": [1.0, 0.0]},
        {"name": "b", "site": "s", "axes": [1]},
        {"name": "c", "site": "other", "axes": [0]},
    ]
    assert dropped == [] and modified == ["a", "b"]
    entries, dropped, _ = remap_concepts(concepts, ["s"], [1, 2], 3, shrink=False)
    assert dropped == ["b"] and entries[0]["direction"] == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"concept": "green"}, "unknown concept 'green'"),
        ({"axes": [5]}, "out of range"),
        ({"axes": [0, 1, 2, 3, 4]}, "leaves nothing"),
        ({"concept": "red", "axes": [0]}, "exactly one"),
        ({"axes": [0], "site": "nowhere"}, "unknown site"),
    ],
)
def test_surgery_errors_name_the_problem(model, kwargs, match):
    with pytest.raises(StructuredConfigError, match=match):
        prune(model, kwargs.pop("concept", None), **kwargs)


def test_project_out_of_a_basis_axis_equals_ablation(model):
    colors = _colors()
    projected = project_out(model, [1.0, 0.0, 0.0, 0.0, 0.0])
    assert np.abs(reconstruct(projected, colors) - reconstruct(ablate(model, axes=[0]), colors)).max() < 1e-6


def test_project_out_removes_an_oblique_direction(model):
    v = np.array([1.0, -2.0, 0.5, 0.0, 1.0])
    projected = project_out(model, v, site="bottleneck", name="test")
    pre = site_activations(projected, _colors(), "encoder")
    assert np.abs(pre @ (v / np.linalg.norm(v))).max() < 1e-5
    assert projected.config.surgery[-1]["op"] == "project_out"
    assert projected.config.bottleneck_dim == 5
    with pytest.raises(StructuredConfigError, match="length 5"):
        project_out(model, [1.0, 0.0])


def test_apply_surgery_from_spec_strings(model):
    colors = _colors()
    assert np.array_equal(
        reconstruct(apply_surgery(model, "prune:red"), colors), reconstruct(prune(model, "red"), colors)
    )
    assert apply_surgery(model, SurgerySpec("ablate", axes=(2,))).config.surgery[-1]["axes"] == [2]
    with pytest.raises(StructuredConfigError, match="retain colors"):
        apply_surgery(model, "prune:red:heal=5")
    with pytest.raises(StructuredConfigError, match="inference-time"):
        apply_surgery(model, "suppress:red")
    with pytest.raises(StructuredConfigError, match="surgery"):
        with intervene(model, "prune:red"):
            pass


def test_heal_trains_only_the_encoder_and_improves_retain_colors(model):
    pruned = prune(model, "red")
    retain = rgb_grid(5)
    before = float(((reconstruct(pruned, retain) - retain) ** 2).mean())
    healed = heal(pruned, retain, steps=60, lr=1.0e-2, seed=0)
    after = float(((reconstruct(healed, retain) - retain) ** 2).mean())
    assert after < before, (before, after)  # mechanics only: the decoder of this untrained model is random
    for name, p in healed.named_parameters():
        same = torch.equal(p, pruned.state_dict()[name])
        assert same == (not name.startswith("encoder.")), name
        assert p.requires_grad
    assert healed.config.surgery[-1]["op"] == "heal" and healed.config.surgery[-1]["trainable"] == "encoder"
    assert healed.config.bottleneck_dim == 4
    everything = heal(pruned, retain, steps=2, trainable="all")
    assert not torch.equal(everything.decoder.out.weight, pruned.decoder.out.weight)
    with pytest.raises(StructuredConfigError, match="no parameters under 'body'"):
        heal(pruned, retain, steps=1, trainable="body")


@pytest.mark.parametrize("axes", [(0,), (1, 3)])
@pytest.mark.parametrize("site", ["bottleneck", "encoder"])
def test_deletion_readout_is_the_pruned_models_forward_pass(model, axes, site):
    # What `deletion_target` trains on must be exactly what `prune` will produce, from the full model's activation.
    colors = rgb_grid(5)
    pruned = prune(model, axes=list(axes))
    with torch.no_grad():
        x = torch.as_tensor(site_activations(model, colors, site))
        predicted = model.deletion_readout(site, axes)(x).numpy()
    np.testing.assert_allclose(predicted, reconstruct(pruned, colors), atol=1e-6)
    assert np.abs(predicted - reconstruct(model, colors)).max() > 1e-3  # deleting the axes changes the output
    with torch.no_grad():  # the intact path is the full model's own forward pass from the site
        intact = model.deletion_readout(site, axes).intact(x).numpy()
    np.testing.assert_allclose(intact, reconstruct(model, colors), atol=1e-6)


@pytest.mark.parametrize("concept, site", [("red", "bottleneck"), ("blueish", "bottleneck"), ("blueish", "encoder")])
def test_intervened_readout_is_the_suppressed_forward_pass_bit_for_bit(model, concept, site):
    # What `suppression_target` trains on must be exactly what suppress:CONCEPT produces, from the full model's
    # activation: the same hook, not renormalized after the bottleneck (renormalized after the encoder site).
    colors = rgb_grid(5)
    with torch.no_grad():
        x = torch.as_tensor(site_activations(model, colors, site))
        readout = model.intervened_readout(site, concept_suppressor(ConceptMap.of(model)[concept]))
        predicted = readout(x).numpy()
        with intervene(model, f"suppress:{concept}@{site}"):
            suppressed = reconstruct(model, colors)
        np.testing.assert_array_equal(predicted, suppressed)
        np.testing.assert_array_equal(readout.intact(x).numpy(), reconstruct(model, colors))
        # The readout edits the rows in the concept's hemisphere (this untrained model's colors may all lie outside
        # it): a row along the concept's direction decodes differently, a row against it bit-identically.
        v = ConceptMap.of(model)[concept].unit_direction()
        rows = torch.stack([v, -v])
        assert not torch.equal(readout(rows)[0], readout.intact(rows)[0])
        assert torch.equal(readout(rows)[1], readout.intact(rows)[1])


def test_intervened_readout_rejects_other_sites(model):
    with pytest.raises(StructuredConfigError, match="'encoder' or 'bottleneck'"):
        model.intervened_readout("decoder", lambda x: x)


def test_deletion_readout_rejects_other_sites_and_axes(model):
    with pytest.raises(StructuredConfigError, match="'encoder' or 'bottleneck'"):
        model.deletion_readout("decoder", (0,))
    with pytest.raises(StructuredConfigError, match=r"axes in \[0, 5\)"):
        model.deletion_readout("bottleneck", (5,))
