"""Interventions: falloffs and mappers, suppression/repulsion/axis suppression on hand-computed tensors, the
context managers (hooks always removed, stacking, bit-identical untouched rows) and spec serialization."""

from __future__ import annotations

import json
import math

import pytest
import torch

from structured_hf import ColorAutoencoderConfig, ColorAutoencoderModel, StructuredConfigError, get_sites
from structured_hf.interventions import (
    BezierMapper,
    BoundedPowerFalloff,
    InterventionSpec,
    LinearMapper,
    SurgerySpec,
    bind,
    intervene,
    parse_spec,
    repel,
    repulsion,
    spec_from_json,
    suppress,
    suppress_axes,
    suppression,
    zero_axes,
)

CONCEPTS = [
    {"name": "red", "site": "bottleneck", "direction": [1.0, 0.0, 0.0, 0.0], "prototypes": ["red"]},
    {"name": "hue", "site": "bottleneck", "axes": [0, 1]},
]


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = ColorAutoencoderModel(ColorAutoencoderConfig(bottleneck_dim=4, hidden_dim=8, concepts=CONCEPTS)).eval()
    # Centre axis 0 on the colors used below, so that about half of them point toward 'red' and half away.
    with torch.no_grad():
        m.encoder.proj.bias[0] -= m.encoder(_colors())[:, 0].median()
    return m


def _colors(n=256, seed=0):
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed))


# ---- falloffs and mappers -----------------------------------------------------------------------------------------
def test_bounded_power_falloff_hand_values():
    hard = BoundedPowerFalloff()  # a = 0, b = 1, p = 0: hemisphere removal
    assert hard(torch.tensor([0.0, 1e-6, 0.3, 1.0])).tolist() == [0.0, 1.0, 1.0, 1.0]
    g = BoundedPowerFalloff(a=0.5, b=0.8, p=2.0)
    # b((α − a)/(1 − a))^p: α = 0.75 -> 0.8 · 0.5² = 0.2; α = 1 -> 0.8; α <= a -> 0
    assert g(torch.tensor([0.4, 0.5, 0.75, 1.0], dtype=torch.float64)).tolist() == pytest.approx([0.0, 0.0, 0.2, 0.8])
    lin = BoundedPowerFalloff(a=0.0, b=1.0, p=1.0)
    assert lin(torch.tensor([0.25])).item() == pytest.approx(0.25)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"a": 1.0}, "falloff.a"),
        ({"a": -0.1}, "falloff.a"),
        ({"b": 3.0}, "falloff.b"),
        ({"p": -1.0}, "falloff.p"),
        ({"p": "2"}, "falloff.p"),
        ({"b": float("nan")}, "falloff.b"),
    ],
)
def test_falloff_rejects_bad_parameters(kwargs, field):
    with pytest.raises(StructuredConfigError, match=field.replace(".", r"\.")):
        BoundedPowerFalloff(**kwargs)


def test_linear_mapper_hand_values():
    m = LinearMapper(a=0.2, b=-0.4)
    assert m(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)).tolist() == pytest.approx([0.2, -0.1, -0.4])


def test_bezier_mapper_smoothstep_and_linear_special_cases():
    # Handles 1/3 make x(t) = t; zero end slopes from (0, 0) to (1, 1) give y = 3t² − 2t³ (smoothstep).
    smooth = BezierMapper(a=0.0, b=1.0, start_slope=0.0, end_slope=0.0)
    alpha = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    expected = [0.0, 0.15625, 0.5, 0.84375, 1.0]
    assert smooth.exact(alpha).tolist() == pytest.approx(expected, abs=1e-12)
    assert smooth(alpha).tolist() == pytest.approx(expected, abs=1e-6)
    # End slopes equal to the chord's slope make the Bézier the straight line.
    line = BezierMapper(a=0.2, b=-0.4, start_slope=-0.6, end_slope=-0.6)
    assert line(alpha).tolist() == pytest.approx(LinearMapper(0.2, -0.4)(alpha).tolist(), abs=1e-9)
    # The default repulsion mapper: y = (1 − t)² t, so m(1/3) = 4/27.
    default = BezierMapper()
    assert default(torch.tensor([1 / 3], dtype=torch.float64)).item() == pytest.approx(4 / 27, abs=1e-6)


def test_bezier_lookup_matches_exact_solution_for_uneven_handles():
    m = BezierMapper(a=0.0, b=-0.5, start_slope=2.0, end_slope=-1.0, start_handle=0.6, end_handle=0.1)
    alpha = torch.rand(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = m.exact(alpha)
    assert (m(alpha) - exact).abs().max() < 1e-5
    # The exact solution really lies on the curve: find t by bisection independently and compare x(t) = α.
    t = torch.linspace(0, 1, 200001, dtype=torch.float64)
    xs, ys = m.point(t)
    idx = torch.searchsorted(xs, alpha).clamp(max=len(t) - 1)
    assert (ys[idx] - exact).abs().max() < 1e-3
    # float32 input gives float32 output (the table is cast once per call)
    assert m(alpha.float()).dtype == torch.float32


def test_bezier_rejects_non_monotone_handles():
    with pytest.raises(StructuredConfigError, match="start_handle"):
        BezierMapper(start_handle=0.7, end_handle=0.5)


# ---- pure tensor functions ---------------------------------------------------------------------------------------
def test_suppression_hand_computed():
    x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([2.0, 0.0], dtype=torch.float64)  # not unit: normalized inside
    assert suppression(x, v).tolist() == [[0.0, 0.0], [0.0, 0.8], [-0.6, 0.8], [0.0, 1.0]]
    soft = suppression(x, v, BoundedPowerFalloff(a=0.5, b=1.0, p=1.0))
    # row 2: α = 0.6, g = 0.1/0.5 = 0.2, x' = x − 0.2·0.6·v = (0.48, 0.8)
    expected = torch.tensor([[0.0, 0.0], [0.48, 0.8], [-0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(soft, expected, atol=1e-12)


def test_repulsion_hand_computed():
    x = torch.tensor([[0.6, 0.8], [1.2, 1.6], [-0.6, 0.8], [1.0, 0.0]], dtype=torch.float64)
    v = torch.tensor([1.0, 0.0], dtype=torch.float64)
    out = repulsion(x, v, LinearMapper(a=0.0, b=0.5))
    # α = 0.6 -> m = 0.3: x' = ‖x‖(0.3, sqrt(1 − 0.09)); the norm is kept (row 2 has ‖x‖ = 2).
    s = math.sqrt(1 - 0.09)
    assert out[0].tolist() == pytest.approx([0.3, s])
    assert out[1].tolist() == pytest.approx([0.6, 2 * s])
    assert out[2].tolist() == [-0.6, 0.8]  # x·v < 0: untouched
    # A row exactly along v has no rotation plane; it goes along the fixed orthogonal axis, cosine m(1) = 0.5.
    assert out[3].tolist() == pytest.approx([0.5, math.sqrt(0.75)])
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1))


def test_zero_axes():
    x = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 5.0, -6.0]])
    assert zero_axes(x, [0, 2]).tolist() == [[0.0, 2.0, 0.0], [0.0, 5.0, 0.0]]


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, v: suppression(x, v),
        lambda x, v: suppression(x, v, BoundedPowerFalloff(0.2, 1.0, 3.0)),
        lambda x, v: repulsion(x, v, BezierMapper()),
    ],
    ids=["hard", "falloff", "repel"],
)
def test_rows_with_non_positive_dot_are_bit_identical(fn):
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(500, 5, generator=g), dim=-1)
    x[:7, 0] = 0.0
    x[:7, 1:] = torch.nn.functional.normalize(x[:7, 1:], dim=-1)  # exactly on the boundary: x·v = 0
    v = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    out = fn(x, v)
    outside = (x @ v) <= 0
    assert outside.sum() > 200
    assert torch.equal(out[outside], x[outside])
    assert not torch.equal(out[~outside], x[~outside])


# ---- context managers on a model ----------------------------------------------------------------------------------
def _hooks(model) -> int:
    return sum(len(site._forward_hooks) for site in get_sites(model).values())


def test_suppress_by_name_changes_only_the_concept_hemisphere(model):
    colors = _colors()
    with torch.no_grad():
        base = model(colors=colors)
        with suppress(model, "red"):
            sup = model(colors=colors)
    dot = base.latents[:, 0]
    assert (dot > 0).any() and (dot <= 0).any()
    assert torch.equal(sup.reconstruction[dot <= 0], base.reconstruction[dot <= 0])
    assert torch.equal(sup.latents[dot > 0][:, 0], torch.zeros(int((dot > 0).sum())))
    assert torch.equal(sup.latents[dot > 0][:, 1:], base.latents[dot > 0][:, 1:])
    assert _hooks(model) == 0


def test_explicit_vector_equals_concept(model):
    colors = _colors()
    with torch.no_grad(), suppress(model, "red"):
        by_name = model(colors=colors).reconstruction
    with torch.no_grad(), suppress(model, site="bottleneck", vector=[3.0, 0.0, 0.0, 0.0]):
        by_vector = model(colors=colors).reconstruction
    assert torch.equal(by_name, by_vector)


def test_hooks_removed_on_exception(model):
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(model, ["suppress:red", "axes:1", "repel:red"]):
            assert _hooks(model) == 3
            raise RuntimeError("boom")
    assert _hooks(model) == 0


def test_interventions_stack_in_order(model):
    colors = _colors(64)
    with torch.no_grad():
        with suppress(model, "red"), suppress_axes(model, [1]):
            stacked = model(colors=colors).latents
        plain = model(colors=colors).latents
    manual = zero_axes(suppression(plain, torch.tensor([1.0, 0.0, 0.0, 0.0])), [1])
    assert torch.equal(stacked, manual)
    assert _hooks(model) == 0


def test_repel_and_axes_by_concept(model):
    colors = _colors(64)
    with torch.no_grad():
        plain = model(colors=colors).latents
        with repel(model, "red", mapper=LinearMapper(0.0, 0.0)):
            repelled = model(colors=colors).latents
        with suppress_axes(model, "hue"):
            no_hue = model(colors=colors).latents
    pos = plain[:, 0] > 0
    assert repelled[pos][:, 0].abs().max() < 1e-6  # everything in the hemisphere sent to the equator
    assert torch.allclose(repelled.norm(dim=-1), plain.norm(dim=-1), atol=1e-6)
    assert torch.equal(no_hue[:, :2], torch.zeros(64, 2)) and torch.equal(no_hue[:, 2:], plain[:, 2:])


@pytest.mark.parametrize(
    "spec, match",
    [
        ("suppress:blue", "unknown concept 'blue'"),
        ("suppress:hue", "axes:hue"),
        ("suppress:[1,0,0]@bottleneck", "length 3 .* width 4"),
        ("suppress:[1,0,0,0]@nowhere", "unknown site 'nowhere'"),
        ("axes:4", "axis 4 is out of range"),
        ("prune:red", "surgery"),
    ],
)
def test_bind_errors_name_the_problem(model, spec, match):
    with pytest.raises(StructuredConfigError, match=match):
        bind(model, spec)
    assert _hooks(model) == 0


def test_failed_bind_registers_nothing(model):
    with pytest.raises(StructuredConfigError):
        with intervene(model, ["suppress:red", "suppress:nope"]):
            pass
    assert _hooks(model) == 0


# ---- specs ---------------------------------------------------------------------------------------------------------
SPEC_STRINGS = [
    "suppress:red",
    "suppress:red:a=0.1,b=1.0,p=2.0",
    "repel:red",
    "repel:red:mapper=linear,a=0.0,b=-0.5",
    "repel:red:mapper=bezier,a=0.0,b=-0.2,start_slope=1.0,end_slope=0.0",
    "suppress:[1,0,0,0]@bottleneck",
    "axes:0,1",
    "axes:2@encoder",
    "axes:hue",
    "ablate:red",
    "prune:0,3@bottleneck",
    "prune:red:heal=50",
]


@pytest.mark.parametrize("text", SPEC_STRINGS)
def test_spec_round_trips(text):
    spec = parse_spec(text)
    assert parse_spec(spec.to_string()) == spec
    assert spec_from_json(spec.to_json()) == spec
    assert parse_spec(json.loads(spec.to_json())) == spec
    assert type(spec).from_dict(spec.to_dict()) == spec


def test_spec_fields_from_strings():
    s = parse_spec("suppress:red:a=0.1,b=1.0,p=2.0")
    assert s == InterventionSpec("suppress", concept="red", falloff=BoundedPowerFalloff(0.1, 1.0, 2.0))
    r = parse_spec("repel:red:mapper=linear,a=0,b=-0.5")
    assert r.mapper == LinearMapper(0.0, -0.5)
    assert parse_spec("axes:0,1") == InterventionSpec("axes", axes=(0, 1))
    v = parse_spec("suppress:[1,0,0,0]@bottleneck")
    assert v.vector == (1.0, 0.0, 0.0, 0.0) and v.site == "bottleneck"
    assert parse_spec("prune:red:heal=50") == SurgerySpec("prune", concept="red", heal_steps=50)
    # JSON objects are accepted where strings are
    assert parse_spec('{"kind": "suppress", "concept": "red"}') == InterventionSpec("suppress", concept="red")


@pytest.mark.parametrize(
    "text, match",
    [
        ("supress:red", "unknown kind 'supress'"),
        ("suppress", "KIND:TARGET"),
        ("suppress:red:q=1", "unknown keys"),
        ("suppress:red:a=1.5", "falloff.a"),
        ("repel:red:mapper=cubic", "unknown type 'cubic'"),
        ("axes:0,0", "distinct"),
        ("suppress:[1,0,0,0]", "needs the site"),
        ("suppress:[0,0]@bottleneck", "zero vector"),
        ("axes:0:p=1", "takes no options"),
        ("prune:red:heal=-1", "heal_steps"),
        ('{"kind": "suppress"', "malformed JSON"),
    ],
)
def test_bad_specs_raise_clear_errors(text, match):
    with pytest.raises(StructuredConfigError, match=match):
        parse_spec(text)


def test_spec_from_dict_rejects_unknown_keys():
    with pytest.raises(StructuredConfigError, match="unknown keys"):
        InterventionSpec.from_dict({"kind": "suppress", "concept": "red", "strength": 2})
    with pytest.raises(StructuredConfigError, match="exactly one of"):
        InterventionSpec.from_dict({"kind": "suppress", "concept": "red", "vector": [1.0], "site": "bottleneck"})


def test_specs_ship_with_a_checkpoint(tmp_path):
    from structured_hf.interventions import load_specs, save_specs

    specs = [parse_spec(s) for s in SPEC_STRINGS]
    save_specs(SPEC_STRINGS, tmp_path)
    assert load_specs(tmp_path) == specs
    (tmp_path / "interventions.json").write_text('{"interventions": [{"kind": "suppress"}]}')
    with pytest.raises(StructuredConfigError, match=r"interventions\[0\]"):
        load_specs(tmp_path)
    with pytest.raises(StructuredConfigError, match="cannot read interventions"):
        load_specs(tmp_path / "nowhere")
