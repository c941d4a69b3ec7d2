"""Color grids, named colors, weak labelers, datasets, the weak-label collator and the epoch sampler."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest
import torch

from structured_hf import StructuredConfigError
from structured_hf.data import (
    FEATURES,
    GRAY_NAMES,
    HUE_NAMES,
    NAMED_COLORS,
    ColorLabeler,
    ColumnarDataset,
    WeakLabelCollator,
    build_color_dataset,
    colors_from_spec,
    hsv_grid,
    hsv_sampling_weights,
    parse_labelers,
    resolve_colors,
    rgb_grid,
    to_hsv,
    to_rgb,
)
from structured_hf.data.labels import (
    blueness,
    cyanness,
    desaturation,
    greenness,
    magentaness,
    redness,
    vibrancy,
    yellowness,
)
from structured_hf.data.samplers import EpochWeightedSampler


# ---- named colors and conversions ---------------------------------------------------------------------------------
def test_named_colors():
    assert len(NAMED_COLORS) == 17
    assert list(NAMED_COLORS) == list(HUE_NAMES) + list(GRAY_NAMES)
    assert NAMED_COLORS["red"] == (1.0, 0.0, 0.0)
    assert NAMED_COLORS["orange"] == pytest.approx((1.0, 0.5, 0.0), abs=1e-6)
    assert NAMED_COLORS["cyan"] == pytest.approx((0.0, 1.0, 1.0), abs=1e-6)
    assert NAMED_COLORS["pink"] == pytest.approx((1.0, 0.0, 0.5), abs=1e-6)
    assert NAMED_COLORS["black"] == (0.0, 0.0, 0.0)
    assert NAMED_COLORS["gray"] == (0.5, 0.5, 0.5)
    assert NAMED_COLORS["white"] == (1.0, 1.0, 1.0)
    # the 12 hues are every 30°, fully saturated and bright
    hsv = to_hsv(np.array([NAMED_COLORS[n] for n in HUE_NAMES]))
    np.testing.assert_allclose(hsv[:, 0], np.arange(12) / 12.0, atol=1e-6)
    np.testing.assert_allclose(hsv[:, 1:], 1.0)


def test_hsv_known_values():
    hsv = to_hsv(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(hsv, [[0.0, 1.0, 1.0], [1 / 3, 1.0, 1.0], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]], atol=1e-12)


def test_hsv_rgb_round_trip():
    rng = np.random.default_rng(0)
    rgb = rng.random((500, 3))
    hsv = to_hsv(rgb)
    assert hsv.shape == (500, 3)
    assert (hsv >= 0).all() and (hsv[:, 0] < 1).all() and (hsv <= 1).all()
    np.testing.assert_allclose(to_rgb(hsv), rgb, atol=1e-12)
    hsv2 = rng.random((500, 3))
    np.testing.assert_allclose(to_hsv(to_rgb(hsv2)), hsv2, atol=1e-9)


# ---- grids --------------------------------------------------------------------------------------------------------
def test_rgb_grid():
    grid = rgb_grid(8)
    assert grid.shape == (512, 3)
    assert len({tuple(row) for row in grid}) == 512
    for corner in [(r, g, b) for r in (0.0, 1.0) for g in (0.0, 1.0) for b in (0.0, 1.0)]:
        assert (grid == corner).all(-1).sum() == 1, corner
    np.testing.assert_allclose(np.unique(grid[:, 0]), np.arange(8) / 7.0)
    assert rgb_grid(2).shape == (8, 3)
    with pytest.raises(StructuredConfigError, match="size >= 2"):
        rgb_grid(1)


def test_hsv_grid_sizes():
    assert hsv_grid(36, 10, 10).shape == (3600, 3)
    assert hsv_grid(4, 2, 3).shape == (24, 3)
    g = hsv_grid(12, 1, 1)
    assert g.shape == (12, 3)
    np.testing.assert_allclose(g[:, 1:], 1.0)  # a single saturation/value level is the full one
    g = hsv_grid(36, 10, 10)
    assert g[:, 0].max() == pytest.approx(35 / 36)  # hue excludes 1.0 (= 0)
    assert set(np.round(g[:, 1], 9)) == set(np.round(np.linspace(0, 1, 10), 9))
    with pytest.raises(StructuredConfigError, match="data.hues"):
        hsv_grid(0, 10, 10)


def test_hsv_sampling_weights_make_distinct_colors_equally_likely():
    n_h, n_s, n_v = 36, 10, 10
    hsv = hsv_grid(n_h, n_s, n_v)
    w = hsv_sampling_weights(hsv, n_h, n_s)
    assert w.shape == (3600,)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert (w > 0).all()
    chromatic = w[(hsv[:, 1] == 1.0) & (hsv[:, 2] == 1.0)]
    assert np.allclose(chromatic, chromatic[0])
    one_chromatic = chromatic[0]
    black_total = w[hsv[:, 2] == 0.0].sum()  # n_h·n_s points that are all the same black
    white_total = w[(hsv[:, 1] == 0.0) & (hsv[:, 2] == 1.0)].sum()  # n_h points that are all the same white
    assert 0.5 < black_total / one_chromatic < 2.0
    assert 0.5 < white_total / one_chromatic < 2.0
    # by hand: each black point weighs 1/(n_s n_h) before normalisation, so all blacks together weigh exactly 1
    assert black_total / one_chromatic == pytest.approx(1.0, rel=1e-9)


# ---- labelers -----------------------------------------------------------------------------------------------------
def test_features_by_hand():
    red, white, orange, gray = [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.5, 0.0], [0.5, 0.5, 0.5]
    rgb = np.array([red, white, orange, gray, [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # r(1 - g/2 - b/2): red 1, white 0, orange 0.75, gray 0.5·0.5 = 0.25, green 0, blue 0
    np.testing.assert_allclose(redness(rgb), [1.0, 0.0, 0.75, 0.25, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(greenness(rgb), [0.0, 0.0, 0.5 * 0.5, 0.25, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(blueness(rgb), [0.0, 0.0, 0.0, 0.25, 0.0, 1.0], atol=1e-12)
    # s·v: red 1, white 0, orange 1, gray 0
    np.testing.assert_allclose(vibrancy(rgb), [1.0, 0.0, 1.0, 0.0, 1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(desaturation(rgb), [0.0, 1.0, 0.0, 1.0, 0.0, 0.0], atol=1e-12)
    assert vibrancy(np.array([[0.3, 0.3, 0.3]]))[0] == 0.0
    # secondaries, (1 - b)(r + g)/2 for yellow: red 0.5, white 0, orange 0.75, gray 0.25, green 0.5, blue 0
    np.testing.assert_allclose(yellowness(rgb), [0.5, 0.0, 0.75, 0.25, 0.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(cyanness(rgb), [0.0, 0.0, 0.0, 0.25, 0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(magentaness(rgb), [0.5, 0.0, 0.25, 0.25, 0.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(yellowness(np.array([[1.0, 1.0, 0.0]])), [1.0])
    np.testing.assert_allclose(yellowness(rgb), blueness(1.0 - rgb), atol=1e-12)
    assert set(FEATURES) == {
        "redness",
        "greenness",
        "blueness",
        "yellowness",
        "cyanness",
        "magentaness",
        "vibrancy",
        "desaturation",
    }


def test_color_labeler_formula():
    rgb = np.array([[1.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 1.0, 1.0], [0.5, 0.0, 0.0]])
    red = ColorLabeler("red", "redness", scale=0.08, power=8.0)
    # 0.08·1^8, 0.08·0.75^8 = 0.08·0.1001129150390625, 0, 0.08·0.5^8 = 0.08/256
    np.testing.assert_allclose(red(rgb), [0.08, 0.008009033203125, 0.0, 0.0003125], rtol=1e-12)
    # clip to [0, 1]: 2·redness
    np.testing.assert_allclose(ColorLabeler("red", "redness", scale=2.0)(rgb), [1.0, 1.0, 0.0, 1.0])


def test_parse_labelers_defaults_and_values():
    labelers = parse_labelers({"red": {"scale": 0.08, "power": 8}, "vibrant": {}, "warm": {"feature": "redness"}})
    assert labelers["red"] == ColorLabeler("red", "redness", 0.08, 8.0)
    assert labelers["vibrant"] == ColorLabeler("vibrant", "vibrancy", 1.0, 1.0)
    assert labelers["warm"].feature == "redness"
    assert parse_labelers({"yellow": {}})["yellow"].feature == "yellowness"
    assert parse_labelers(None) == {}


@pytest.mark.parametrize(
    "spec, pattern",
    [
        ({"red": {"feature": "rednes"}}, r"data\.labels\.red\.feature: unknown feature 'rednes'"),
        ({"warm": {}}, r"data\.labels\.warm\.feature: unknown feature None"),
        ({"red": {"scale": "1e-2"}}, r"data\.labels\.red\.scale: expected a number, got '1e-2'.*1\.0e-2"),
        ({"red": {"power": True}}, r"data\.labels\.red\.power: expected a number"),
        ({"red": {"scale": -1.0}}, r"data\.labels\.red\.scale: expected a non-negative number"),
        ({"red": {"scael": 1.0}}, r"data\.labels\.red: unknown keys \['scael'\]"),
        ({"red": 0.08}, r"data\.labels\.red: expected a mapping"),
        ([{"red": {}}], r"data\.labels: expected a mapping"),
    ],
)
def test_parse_labelers_errors(spec, pattern):
    with pytest.raises(StructuredConfigError, match=pattern):
        parse_labelers(spec)


# ---- datasets -----------------------------------------------------------------------------------------------------
def test_build_color_dataset_columns():
    colors = rgb_grid(3)
    ds = build_color_dataset(colors, parse_labelers({"red": {"scale": 0.08, "power": 8.0}, "vibrant": {}}))
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == ["colors", "prob_red", "prob_vibrant"]
    assert len(ds) == 27
    red_row = [i for i, c in enumerate(colors) if tuple(c) == (1.0, 0.0, 0.0)][0]
    assert ds[red_row]["colors"] == [1.0, 0.0, 0.0]
    assert ds[red_row]["prob_red"] == pytest.approx(0.08, rel=1e-6)
    assert ds[0]["prob_red"] == 0.0 and ds[0]["prob_vibrant"] == 0.0  # black


def test_build_color_dataset_exact_labels_only_for_the_prototype():
    colors = rgb_grid(3)
    ds = build_color_dataset(
        colors,
        parse_labelers({"red": {"scale": 0.08, "power": 8.0}}),
        exact_labels={"red": np.array([NAMED_COLORS["red"]])},
    )
    probs = np.asarray(ds["prob_red"])
    assert probs.sum() == 1.0
    assert set(probs.tolist()) == {0.0, 1.0}
    assert tuple(colors[probs == 1.0][0]) == (1.0, 0.0, 0.0)
    # several prototypes
    ds = build_color_dataset(colors, exact_labels={"primary": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]})
    assert np.asarray(ds["prob_primary"]).sum() == 3.0


def test_build_color_dataset_sample_weights():
    ds = build_color_dataset(np.zeros((3, 3)), sample_weights=np.array([0.2, 0.3, 0.5]))
    assert ds["sample_weight"][:] == pytest.approx([0.2, 0.3, 0.5])


def test_colors_from_spec_variants():
    colors, weights = colors_from_spec({"grid": "rgb", "size": 3})
    assert colors.shape == (27, 3) and weights is None
    colors, weights = colors_from_spec({"grid": "hsv", "hues": 4, "saturations": 2, "values": 3})
    assert colors.shape == (24, 3) and weights.shape == (24,)
    assert weights.sum() == pytest.approx(1.0)
    assert (colors >= 0).all() and (colors <= 1).all()
    colors, weights = colors_from_spec({"grid": "named"})
    assert colors.shape == (17, 3) and weights is None
    colors, weights = colors_from_spec({"colors": ["red", [0.5, 0.25, 0.0]]})
    np.testing.assert_array_equal(colors, [[1.0, 0.0, 0.0], [0.5, 0.25, 0.0]])
    colors, weights = colors_from_spec({"grid": "rgb", "size": 2, "include_named": True})
    assert colors.shape == (8 + 17, 3)
    colors, weights = colors_from_spec({"grid": "hsv", "hues": 4, "saturations": 2, "values": 2, "include_named": True})
    assert colors.shape == (16 + 17, 3) and weights.shape == (33,)
    assert weights.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "spec, pattern",
    [
        ({"grid": "cube"}, r"data\.train\.grid: expected one of rgb, hsv, named, colors; got 'cube'"),
        ({}, r"data\.train\.grid"),
        ({"grid": "rgb", "sise": 8}, r"data\.train: unknown keys \['sise'\]"),
        ({"grid": "rgb", "size": "8"}, r"data\.train\.size: expected a positive integer"),
        ({"grid": "rgb", "size": 1}, r"size >= 2"),
        ({"grid": "hsv", "hues": 0}, r"data\.train\.hues: expected a positive integer"),
        ({"colors": ["red", "blurple"]}, r"data\.train\.colors\[1\]: unknown color 'blurple'"),
        ({"colors": [[1.0, 0.0]]}, r"data\.train\.colors\[0\]: expected a color name or an RGB triple"),
        ({"colors": []}, r"data\.train\.colors: expected a non-empty list"),
        ([8], r"data\.train: expected a mapping"),
    ],
)
def test_colors_from_spec_errors(spec, pattern):
    with pytest.raises(StructuredConfigError, match=pattern):
        colors_from_spec(spec)


def test_resolve_colors_lists_known_names():
    with pytest.raises(StructuredConfigError, match=r"unknown color 'redd'.*'red'"):
        resolve_colors(["redd"])


# ---- collator -----------------------------------------------------------------------------------------------------
def _batch(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"colors": torch.rand(len(probs), 3, generator=torch.Generator().manual_seed(0)), "prob_red": probs}


def test_weak_label_rates_match_probabilities():
    n = 20000
    for p in (0.08, 0.5, 0.01):
        collator = WeakLabelCollator(["red"], sample=True, generator=torch.Generator().manual_seed(1234))
        labels = collator(_batch(torch.full((n,), p)))["concept_labels"]["red"]
        assert set(labels.unique().tolist()) <= {0.0, 1.0}
        se = math.sqrt(p * (1 - p) / n)
        assert abs(labels.mean().item() - p) < 4 * se, (p, labels.mean().item())


def test_weak_label_rates_per_row_over_repeated_draws():
    # the same small batch served many times: each row is labelled at its own rate, fresh on every draw
    probs = torch.tensor([0.0, 0.08, 0.3, 0.9, 1.0])
    collator = WeakLabelCollator(["red"], sample=True, generator=torch.Generator().manual_seed(7))
    batch = _batch(probs)
    draws = 4000
    counts = torch.zeros(5)
    for _ in range(draws):
        counts += collator(batch)["concept_labels"]["red"]
    rates = counts / draws
    assert rates[0] == 0.0 and rates[4] == 1.0
    for p, rate in zip(probs[1:4].tolist(), rates[1:4].tolist()):
        assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / draws), (p, rate)


def test_successive_draws_differ_and_seeded_draws_repeat():
    batch = _batch(torch.full((256,), 0.5))
    collator = WeakLabelCollator(["red"], generator=torch.Generator().manual_seed(0))
    first = collator(batch)["concept_labels"]["red"]
    second = collator(batch)["concept_labels"]["red"]
    assert not torch.equal(first, second)
    again = WeakLabelCollator(["red"], generator=torch.Generator().manual_seed(0))(batch)["concept_labels"]["red"]
    assert torch.equal(first, again)


def test_collator_sample_false_passes_probabilities_through():
    probs = torch.tensor([0.0, 0.08, 0.5, 1.0])
    batch = _batch(probs)
    out = WeakLabelCollator(["red"], sample=False)(batch)
    assert torch.equal(out["concept_labels"]["red"], probs)
    assert torch.equal(out["colors"], batch["colors"])
    assert torch.equal(out["labels"], batch["colors"])  # the autoencoder's target is its input


def test_collator_accepts_a_list_of_rows_and_names_missing_columns():
    rows = [{"colors": [1.0, 0.0, 0.0], "prob_red": 1.0}, {"colors": [0.0, 1.0, 0.0], "prob_red": 0.0}]
    out = WeakLabelCollator(["red"], sample=True, generator=torch.Generator().manual_seed(0))(rows)
    assert out["colors"].shape == (2, 3)
    assert out["concept_labels"]["red"].tolist() == [1.0, 0.0]
    with pytest.raises(StructuredConfigError, match=r"label: no column 'prob_blue' for label 'blue'"):
        WeakLabelCollator(["blue"])(rows)


# ---- tensor-backed dataset ----------------------------------------------------------------------------------------
def test_columnar_dataset_getitems_equals_source_rows():
    colors, weights = colors_from_spec({"grid": "hsv", "hues": 4, "saturations": 2, "values": 2})
    ds = build_color_dataset(colors, parse_labelers({"red": {"scale": 0.5}, "vibrant": {}}), sample_weights=weights)
    col = ColumnarDataset(ds)
    assert len(col) == len(ds) == 16
    assert sorted(col.label_names) == ["red", "vibrant"]
    assert col.sample_weights is not None and col.sample_weights.shape == (16,)
    indices = [3, 0, 3, 15, 7]
    batch = col.__getitems__(indices)
    assert set(batch) == {"colors", "prob_red", "prob_vibrant", "sample_weight"}
    assert batch["colors"].shape == (5, 3)
    for k, v in batch.items():
        assert isinstance(v, torch.Tensor)
        expected = torch.tensor([ds[i][k] for i in indices], dtype=v.dtype)
        assert torch.equal(v, expected), k
    single = col[7]
    assert torch.equal(single["colors"], torch.tensor(ds[7]["colors"]))
    # the collator consumes the batched dict directly
    out = WeakLabelCollator(["red"], sample=False)(batch)
    assert torch.equal(out["concept_labels"]["red"], batch["prob_red"])


def test_columnar_dataset_column_subset():
    ds = build_color_dataset(rgb_grid(2), parse_labelers({"red": {}}))
    col = ColumnarDataset(ds, columns=["colors"])
    assert set(col.columns) == {"colors"}
    assert col.label_names == [] and col.sample_weights is None


# ---- sampler ------------------------------------------------------------------------------------------------------
def test_epoch_sampler_reproducible_per_epoch_and_different_across_epochs():
    sampler = EpochWeightedSampler(None, num_items=100, num_samples=500, seed=3)
    assert len(sampler) == 500
    first = list(sampler)
    assert len(first) == 500 and min(first) >= 0 and max(first) < 100
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    other = EpochWeightedSampler(None, num_items=100, num_samples=500, seed=3)
    assert list(other) == first


def test_epoch_sampler_respects_weights():
    weights = torch.tensor([0.0, 1.0, 3.0, 0.0])
    sampler = EpochWeightedSampler(weights, num_items=4, num_samples=40000, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        draws = torch.tensor(list(sampler))
        assert not (draws == 0).any() and not (draws == 3).any()  # zero weight: never drawn
        rate = (draws == 2).double().mean().item()
        assert abs(rate - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 40000)
