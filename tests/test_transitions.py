"""Minimum-jerk transitions that can be re-targeted mid-flight, and reactive rules firing in real training."""

from __future__ import annotations

import pytest

from structured_hf import StructuredConfigError
from structured_hf.training import build_trainer, minimum_jerk, parse_recipe
from structured_hf.training.transitions import ReactiveRule, SmoothParameter, quintic_coefficients


def test_quintic_from_rest_is_the_minimum_jerk_ease():
    assert quintic_coefficients(0.0, 0.0, 0.0, 1.0, 10.0) == (0.0, 0.0, 0.0, 10.0, -15.0, 6.0)
    p = SmoothParameter(2.0)
    p.retarget(4.0, step=100, duration=50)
    for step in (100, 110, 125, 140, 150):
        assert p.value(step) == pytest.approx(2.0 + 2.0 * minimum_jerk((step - 100) / 50))
    assert p.value(90) == 2.0 and p.value(1000) == pytest.approx(4.0)
    assert p.velocity(150) == 0.0 and p.acceleration(150) == 0.0


def test_retarget_mid_flight_is_c2_continuous():
    p = SmoothParameter(0.0)
    p.retarget(1.0, step=0, duration=100)
    before = (p.value(40), p.velocity(40), p.acceleration(40))
    assert before[1] > 0 and before[2] > 0  # really mid-flight, accelerating
    p.retarget(-1.0, step=40, duration=60)
    after = (p.value(40), p.velocity(40), p.acceleration(40))
    assert after == pytest.approx(before, rel=1e-9, abs=1e-12)
    # ... and it still arrives at the new target, at rest.
    assert p.value(100) == pytest.approx(-1.0)
    assert p.velocity(100) == 0.0
    # A forward difference agrees with the analytic velocity (no jump hidden by the formula).
    h = 1e-3
    assert (p.value(40 + h) - p.value(40)) / h == pytest.approx(before[1], rel=1e-3)


def test_in_motion_hand_over_keeps_the_slope():
    p = SmoothParameter.in_motion(0.3, 0.01, step=20)
    p.retarget(1.0, step=20, duration=30)
    assert p.value(20) == pytest.approx(0.3) and p.velocity(20) == pytest.approx(0.01)
    assert p.value(50) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "entry, field",
    [
        ({"metric": "loss", "op": "=<", "threshold": 1.0, "parameter": "a", "target": 0.0}, "op"),
        ({"metric": "loss", "op": "<", "threshold": "1e-3", "parameter": "a", "target": 0.0}, "threshold"),
        ({"metric": "loss", "op": "<", "threshold": 1.0, "parameter": "a", "target": 0.0, "duration": 0}, "duration"),
        ({"metric": "loss", "op": "<", "threshold": 1.0, "target": 0.0}, "parameter"),
        ({"metric": "loss", "op": "<", "threshold": 1.0, "parameter": "a", "target": 0.0, "when": 3}, "unknown keys"),
    ],
)
def test_reactive_rule_errors_name_the_field(entry, field):
    with pytest.raises(StructuredConfigError, match=field):
        ReactiveRule.from_dict(entry, "reactive[0]")


def test_rule_fires_once_and_rearms_only_after_condition_clears():
    rule = ReactiveRule("m", "<", 1.0, "a", 0.0, once=False)
    assert [rule.check({"m": v}) for v in (2.0, 0.5, 0.4, 3.0, 0.1)] == [False, True, False, False, True]
    once = ReactiveRule("m", "<", 1.0, "a", 0.0)
    assert once.check({"m": 0.5}) and (once.fired_at is None)  # the callback records fired_at
    once.fired_at = 3
    assert not once.check({"m": 2.0}) and not once.check({"m": 0.5})


def test_reactive_rule_fires_in_training_and_moves_the_weight_smoothly(tiny_recipe):
    recipe = tiny_recipe(max_steps=14)
    # When the hue-plane term is below a (generous) threshold, raise the repulsion weight 0.01 -> 0.5 over 8 steps.
    recipe["reactive"] = [
        {"metric": "term/plane", "op": "<", "threshold": 10.0, "parameter": "separate", "target": 0.5, "duration": 8}
    ]
    trainer = build_trainer(parse_recipe(recipe))
    trainer.train()
    events = trainer.schedule_callback.events
    assert len(events) == 1 and events[0]["parameter"] == "separate"
    fired = events[0]["step"]
    weights = [(row["step"], row["weight/separate"]) for row in trainer.state.log_history if "weight/separate" in row]
    before = [w for s, w in weights if s <= fired]
    after = [w for s, w in weights if s > fired]
    assert all(w == pytest.approx(0.01) for w in before)
    assert after == sorted(after), "the weight rises monotonically"
    assert after[-1] == pytest.approx(0.5)
    # Smooth: the first step after firing moves only a little (minimum jerk starts at rest).
    assert after[0] - 0.01 < 0.05 * (0.5 - 0.01)


def test_rule_that_never_triggers_leaves_the_schedule_alone(tiny_recipe):
    recipe = tiny_recipe(max_steps=5)
    recipe["reactive"] = [
        {"metric": "term/plane", "op": "<", "threshold": -1.0, "parameter": "separate", "target": 0.5}
    ]
    trainer = build_trainer(parse_recipe(recipe))
    trainer.train()
    assert trainer.schedule_callback.events == []
    assert all(
        row["weight/separate"] == pytest.approx(0.01) for row in trainer.state.log_history if "weight/separate" in row
    )


def test_reactive_rule_on_unknown_parameter_is_a_clear_error(tiny_recipe):
    recipe = tiny_recipe()
    recipe["reactive"] = [{"metric": "loss", "op": "<", "threshold": 1.0, "parameter": "nope", "target": 0.5}]
    with pytest.raises(StructuredConfigError, match=r"reactive\[0\]\.parameter: unknown parameter 'nope'"):
        build_trainer(parse_recipe(recipe))
