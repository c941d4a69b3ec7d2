"""ConceptSpec / ConceptMap parsing and validation."""

from __future__ import annotations

import pytest
import torch
import yaml

from structured_hf import ConceptMap, ConceptSpec, StructuredConfigError

RED = {
    "name": "red",
    "site": "bottleneck",
    "direction": [1.0, 0.0, 0.0, 0.0],
    "prototypes": ["red"],
    "description": "pure red",
}
HUE = {"name": "hue", "site": "bottleneck", "axes": [0, 1], "prototypes": ["red", [0.0, 1.0, 0.0]]}
SITES = {"bottleneck": 4, "encoder": 4}


def _entry(**changes):
    entry = dict(RED)
    for key, value in changes.items():
        if value is _DROP:
            entry.pop(key, None)
        else:
            entry[key] = value
    return entry


_DROP = object()


def test_parse_direction_and_axes_concepts():
    cmap = ConceptMap.parse([RED, HUE])
    assert cmap.names == ["red", "hue"]
    red, hue = cmap["red"], cmap["hue"]
    assert red.kind == "direction" and red.direction == (1.0, 0.0, 0.0, 0.0) and red.axes is None
    assert hue.kind == "axes" and hue.axes == (0, 1) and hue.direction is None
    assert red.prototypes == ("red",)
    assert hue.prototypes == ("red", (0.0, 1.0, 0.0))
    assert red.description == "pure red"
    assert len(cmap) == 2 and "red" in cmap and "blue" not in cmap
    assert cmap[1] is hue
    assert [c.name for c in cmap] == ["red", "hue"]


def test_integer_directions_become_floats():
    spec = ConceptSpec.from_dict({"name": "r", "site": "s", "direction": [1, 0, 0]})
    assert spec.direction == (1.0, 0.0, 0.0)
    assert all(isinstance(x, float) for x in spec.direction)


@pytest.mark.parametrize(
    "entry, field",
    [
        (_entry(name=_DROP), r"concepts\[0\]\.name"),
        (_entry(name=""), r"concepts\[0\]\.name"),
        (_entry(name=3), r"concepts\[0\]\.name"),
        (_entry(site=_DROP), r"concepts\[0\]\.site"),
    ],
)
def test_missing_name_or_site(entry, field):
    with pytest.raises(StructuredConfigError, match=field):
        ConceptMap.parse([entry])


def test_both_direction_and_axes():
    with pytest.raises(StructuredConfigError, match="exactly one of 'direction' or 'axes'") as info:
        ConceptMap.parse([_entry(axes=[0])])
    assert info.value.field == "concepts[0]"
    assert "red" in str(info.value)


def test_neither_direction_nor_axes():
    with pytest.raises(StructuredConfigError, match="exactly one of 'direction' or 'axes'"):
        ConceptMap.parse([_entry(direction=_DROP)])


def test_zero_direction():
    with pytest.raises(StructuredConfigError, match=r"concepts\[0\]\.direction: is the zero vector"):
        ConceptMap.parse([_entry(direction=[0.0, 0.0, 0.0, 0.0])])


def test_string_number_in_direction_names_the_element():
    # YAML reads 1e-4 (no dot) as the string '1e-4'
    entries = yaml.safe_load("- {name: red, site: bottleneck, direction: [1.0, 1e-4, 0.0, 0.0]}")
    assert entries[0]["direction"][1] == "1e-4"
    with pytest.raises(
        StructuredConfigError, match=r"concepts\[0\]\.direction\[1\]: expected a number, got '1e-4' \(str\)"
    ):
        ConceptMap.parse(entries)


@pytest.mark.parametrize(
    "bad", [[1.0, float("nan"), 0.0, 0.0], [float("inf"), 0.0, 0.0, 0.0], [True, 0.0, 0.0, 0.0], [], "1,0,0,0", None]
)
def test_bad_directions(bad):
    entry = _entry(direction=bad) if bad is not None else _entry(direction=_DROP, axes=_DROP)
    with pytest.raises(StructuredConfigError, match=r"concepts\[0\]"):
        ConceptMap.parse([entry])


def test_duplicate_axes():
    with pytest.raises(StructuredConfigError, match=r"concepts\[0\]\.axes: axes must be distinct"):
        ConceptMap.parse([dict(HUE, axes=[0, 1, 0])])


@pytest.mark.parametrize("axes, index", [([0, -1], 1), ([1.0], 0), ([True], 0), (["0"], 0)])
def test_bad_axis_values(axes, index):
    with pytest.raises(
        StructuredConfigError, match=rf"concepts\[0\]\.axes\[{index}\]: expected a non-negative integer"
    ):
        ConceptMap.parse([dict(HUE, axes=axes)])


def test_empty_axes():
    with pytest.raises(StructuredConfigError, match=r"concepts\[0\]\.axes"):
        ConceptMap.parse([dict(HUE, axes=[])])


def test_unknown_keys():
    with pytest.raises(StructuredConfigError, match=r"concepts\[1\]: unknown keys \['dirction'\]"):
        ConceptMap.parse([HUE, _entry(dirction=[1.0, 0.0, 0.0, 0.0])])


def test_entry_not_a_mapping_and_map_not_a_list():
    with pytest.raises(StructuredConfigError, match=r"concepts\[0\]"):
        ConceptMap.parse(["red"])
    with pytest.raises(StructuredConfigError, match="expected a list of concept entries"):
        ConceptMap.parse(RED)
    assert len(ConceptMap.parse(None)) == 0


def test_duplicate_concept_names():
    with pytest.raises(StructuredConfigError, match=r"concepts\[1\]\.name: duplicate concept name 'red'"):
        ConceptMap.parse([RED, dict(HUE, name="red")])


def test_unknown_concept_lookup_lists_known_names():
    cmap = ConceptMap.parse([RED, HUE])
    with pytest.raises(StructuredConfigError, match=r"unknown concept 'blue'.*\['red', 'hue'\]"):
        cmap["blue"]


def test_validate_accepts_fitting_map():
    cmap = ConceptMap.parse([RED, HUE])
    assert cmap.validate(SITES) is cmap


def test_validate_unknown_site():
    cmap = ConceptMap.parse([RED, dict(HUE, site="bottlenek")])
    with pytest.raises(StructuredConfigError, match=r"concepts\[1\] \('hue'\)\.site: unknown site 'bottlenek'") as info:
        cmap.validate(SITES)
    assert "bottleneck" in str(info.value) and "encoder" in str(info.value)


def test_validate_wrong_direction_length():
    cmap = ConceptMap.parse([_entry(direction=[1.0, 0.0, 0.0])])
    with pytest.raises(StructuredConfigError, match=r"concepts\[0\] \('red'\)\.direction: has length 3 .* width 4"):
        cmap.validate(SITES)


def test_validate_axis_out_of_range():
    cmap = ConceptMap.parse([dict(HUE, axes=[0, 4])])
    with pytest.raises(
        StructuredConfigError, match=r"concepts\[0\] \('hue'\)\.axes: axis 4 is out of range .* width 4"
    ):
        cmap.validate(SITES)
    # the largest valid axis is fine
    ConceptMap.parse([dict(HUE, axes=[3])]).validate(SITES)


def test_to_dict_round_trip():
    cmap = ConceptMap.parse([RED, HUE])
    listed = cmap.to_list()
    assert listed[0] == RED
    assert listed[1] == HUE
    again = ConceptMap.parse(listed)
    assert list(again) == list(cmap)
    # the plain form survives JSON/YAML as config.json stores it
    assert ConceptMap.parse(yaml.safe_load(yaml.safe_dump(listed))).to_list() == listed
    for spec in cmap:
        assert ConceptSpec.from_dict(spec.to_dict()) == spec


def test_unit_direction_has_norm_one_and_vector_is_as_written():
    spec = ConceptSpec.from_dict({"name": "v", "site": "s", "direction": [3.0, 4.0, 0.0, 0.0]})
    unit = spec.unit_direction()
    assert unit.norm().item() == pytest.approx(1.0, abs=1e-7)
    torch.testing.assert_close(unit, torch.tensor([0.6, 0.8, 0.0, 0.0]))
    assert spec.unit_direction(dtype=torch.float64).dtype == torch.float64
    torch.testing.assert_close(spec.vector(), torch.tensor([3.0, 4.0, 0.0, 0.0]))


def test_axis_mask_and_kind_mismatch_errors():
    red, hue = ConceptMap.parse([RED, HUE])
    assert hue.axis_mask(4).tolist() == [True, True, False, False]
    with pytest.raises(StructuredConfigError, match="concepts.hue"):
        hue.unit_direction()
    with pytest.raises(StructuredConfigError, match="concepts.red"):
        red.axis_mask(4)


@pytest.mark.parametrize("direction", [[1e-25, 0.0, 0.0, 0.0], [1e39, 0.0, 0.0, 0.0]])
def test_a_direction_that_passes_validation_has_a_finite_unit_vector(direction):
    try:
        spec = ConceptSpec.from_dict({"name": "x", "site": "bottleneck", "direction": direction})
    except StructuredConfigError as e:  # rejecting it at parse time is an acceptable fix
        assert "direction" in str(e)
        return
    unit = spec.unit_direction()
    assert torch.isfinite(unit).all(), unit
    assert unit.norm().item() == pytest.approx(1.0, abs=1e-6)


def test_one_hot_shorthand_for_one_axis_or_a_block_of_axes():
    one = ConceptMap.parse([_entry(direction={"one_hot": 2, "width": 4})])["red"]
    assert one.direction == (0.0, 0.0, 1.0, 0.0)
    block = ConceptMap.parse([_entry(direction={"one_hot": [0, 3], "width": 4})])["red"]
    assert block.direction == (1.0, 0.0, 0.0, 1.0)
    assert torch.allclose(block.unit_direction(), torch.tensor([1.0, 0.0, 0.0, 1.0]) / 2**0.5)


@pytest.mark.parametrize(
    "bad",
    [
        {"one_hot": 4, "width": 4},
        {"one_hot": [0, 0], "width": 4},
        {"one_hot": [], "width": 4},
        {"one_hot": [1, True], "width": 4},
        {"one_hot": 0},
        {"one_hot": [0], "width": 4, "x": 1},
    ],
)
def test_bad_one_hot_shorthand_is_named(bad):
    with pytest.raises(StructuredConfigError, match=r"concepts\[0\]\.direction"):
        ConceptMap.parse([_entry(direction=bad)])
