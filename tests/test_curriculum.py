"""Curricula (stepped phases, smooth vibrancy floor) and the M1 structure metrics."""

from __future__ import annotations

import numpy as np
import pytest

from structured_hf import StructuredConfigError
from structured_hf.data import hsv_grid, to_hsv, to_rgb
from structured_hf.data.curriculum import Curriculum, CurriculumSampler
from structured_hf.evaluation.structure import hue_cyclic_order, latent_jitter, leak_outside, loss_spikes
from structured_hf.training import build_trainer, parse_recipe

PHASES = {
    "phases": [
        {
            "start": 0,
            "name": "primaries",
            "hues": [0, 60, 120, 180, 240, 300],
            "saturation": [1.0, 1.0],
            "value": [1.0, 1.0],
        },
        {"start": 4, "name": "all-hues", "saturation": [1.0, 1.0], "value": [1.0, 1.0]},
        {"start": "+4", "name": "full"},
    ]
}


def _colors():
    return to_rgb(hsv_grid(12, 3, 3))


def test_stepped_phases_restrict_what_is_drawn():
    curriculum = Curriculum.from_dict(PHASES)
    assert curriculum.boundaries() == [(0, "primaries"), (4, "all-hues"), (8, "full")]
    sampler = CurriculumSampler(_colors(), curriculum, samples_per_step=50, num_steps=12, seed=1)
    idx = np.asarray(list(sampler)).reshape(12, 50)
    hsv = to_hsv(_colors())
    first = hsv[idx[:4].ravel()]
    assert np.allclose(first[:, 1:], 1.0) and set(np.round(first[:, 0] * 360).astype(int)) <= {
        0,
        60,
        120,
        180,
        240,
        300,
    }
    second = hsv[idx[4:8].ravel()]
    assert np.allclose(second[:, 1:], 1.0) and len(set(np.round(second[:, 0] * 360).astype(int))) > 6
    assert (hsv[idx[8:].ravel()][:, 2] < 1.0).any(), "the full phase draws darker colors too"
    # Pure function of (seed, position): the same stream twice, a different one for another seed.
    assert list(sampler) == list(CurriculumSampler(_colors(), curriculum, 50, 12, seed=1))
    assert list(sampler) != list(CurriculumSampler(_colors(), curriculum, 50, 12, seed=2))


def test_smooth_vibrancy_floor_widens_the_data():
    curriculum = Curriculum.from_dict({"vibrancy_min": {"interpolation": "smooth", "keys": [[0, 1.0], [10, 0.0]]}})
    sampler = CurriculumSampler(_colors(), curriculum, samples_per_step=200, num_steps=11, seed=0)
    idx = np.asarray(list(sampler)).reshape(11, 200)
    hsv = to_hsv(_colors())
    vib = hsv[:, 1] * hsv[:, 2]
    lowest = [vib[row].min() for row in idx]
    assert lowest[0] == pytest.approx(1.0)
    assert all(lowest[i] >= curriculum.vibrancy_min(i) - 1e-9 for i in range(11))
    assert lowest[-1] < 0.2


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"phases": [{"start": 5, "name": "late"}]}, r"phases\[0\]\.start"),
        ({"phases": [{"start": 0}, {"start": 0}]}, r"phases\[1\]\.start"),
        ({"phases": [{"start": 0, "saturation": [1.0, 0.5]}]}, r"saturation"),
        ({"phases": [{"start": 0, "hues": "red"}]}, r"hues"),
        ({"vibrancy_min": "1e-3"}, r"vibrancy_min"),
        ({"phase": []}, r"unknown keys"),
    ],
)
def test_curriculum_errors_name_the_field(spec, field):
    with pytest.raises(StructuredConfigError, match=field):
        Curriculum.from_dict(spec)


def test_curriculum_drives_real_training_and_is_logged(tiny_recipe):
    recipe = tiny_recipe(max_steps=10)
    recipe["data"]["train"] = {"grid": "hsv", "hues": 12, "saturations": 3, "values": 3}
    recipe["data"]["curriculum"] = PHASES
    trainer = build_trainer(parse_recipe(recipe))
    trainer.train()
    phases = [row["data/phase"] for row in trainer.state.log_history if "data/phase" in row]
    assert phases == [0.0] * 4 + [1.0] * 4 + [2.0] * 2


def test_hue_order_check():
    angles = np.radians(np.arange(12) * 30.0)
    circle = np.stack([np.cos(angles), np.sin(angles)], -1)
    assert hue_cyclic_order(circle)["ok"] and hue_cyclic_order(circle)["direction"] == 1
    assert hue_cyclic_order(circle[::-1])["ok"] and hue_cyclic_order(circle[::-1])["direction"] == -1
    swapped = circle.copy()
    swapped[[3, 4]] = swapped[[4, 3]]
    assert not hue_cyclic_order(swapped)["ok"]
    assert not hue_cyclic_order(np.concatenate([circle[:6], circle[:6]]))["ok"]  # winds twice over half


def test_leak_jitter_and_spikes_by_hand():
    acts = np.asarray([[3.0, 4.0, 0.0], [1.0, 0.0, 1.0]])
    assert leak_outside(acts, [0, 1]).tolist() == [0.0, 0.5]
    snaps = [np.zeros((2, 2)), np.asarray([[3.0, 4.0], [0.0, 0.0]])]
    assert latent_jitter(snaps)["mean"] == pytest.approx(2.5)
    history = [{"step": s, "loss": 1.0} for s in range(1, 100)]
    history[60]["loss"] = 5.0  # step 61, right after a boundary at 60
    spikes = loss_spikes(history, [30, 60], window=10)
    assert spikes["count"] == 1 and spikes["heights"] == [1.0, 5.0]


def test_off_plane_spread_by_hand():
    from structured_hf.evaluation.structure import off_plane_spread

    colors = np.asarray([[1.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # dullness 0, .5, 1, 0
    # pure hues in the plane, the darker the further out of it: r = 1
    acts = np.asarray([[1.0, 0.0, 0.0], [0.5**0.5, 0.0, 0.5**0.5], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    spread = off_plane_spread(acts, colors, (0, 1))
    assert spread["r"] == pytest.approx(1.0)
    assert spread["share_vivid"] == pytest.approx(0.0) and spread["share_dull"] == pytest.approx(1.0)
    # everything in the plane: nothing spreads out, r is undefined
    flat = off_plane_spread(acts * np.asarray([1.0, 1.0, 0.0]) + np.asarray([0.0, 0.1, 0.0]), colors, (0, 1))
    assert flat["r"] is None and flat["share_dull"] == 0.0
    assert off_plane_spread(acts[:, :2], colors, (0, 1))["r"] is None  # no axes outside the plane


def test_loss_excursions_find_spikes_anywhere():
    from structured_hf.evaluation.structure import loss_excursions

    history = [{"step": s, "loss": 1.0} for s in range(1, 200)]
    for s in (40, 41):
        history[s - 1]["loss"] = 3.0  # one excursion over two logs, peak 3x
    history[119]["loss"] = 10.0  # step 120
    history[149]["loss"] = 1.8  # below the factor
    out = loss_excursions(history, window=20, factor=2.0)
    assert out["count"] == 2 and out["max_ratio"] == pytest.approx(10.0)
    assert [step for step, _ in out["peaks"]] == [40, 120]
    assert loss_excursions([], key="loss") == {"count": 0, "max_ratio": 0.0, "peaks": []}
