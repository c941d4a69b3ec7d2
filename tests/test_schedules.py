"""Keyframed schedules against values computed by hand."""

from __future__ import annotations

import math

import pytest
import yaml

from structured_hf import StructuredConfigError
from structured_hf.training import INTERPOLATIONS, Schedule, minimum_jerk, parse_schedule


def test_constants():
    s = parse_schedule(0.25, "w")
    assert s(0) == 0.25 and s(10**6) == 0.25 and s(-5) == 0.25
    assert s.is_constant
    assert s.to_dict() == 0.25
    assert parse_schedule(3, "w")(7) == 3.0
    assert Schedule.constant(2)(100) == 2.0


def test_parse_schedule_passes_a_schedule_through():
    s = Schedule((0.0, 1.0), (1.0, 2.0), "linear")
    assert parse_schedule(s, "w") is s


def test_step_interpolation_holds_then_jumps():
    s = parse_schedule({"interpolation": "step", "keys": [[0, 1.0], [10, 2.0], [20, 5.0]]}, "w")
    assert [s(t) for t in (0, 5, 9.999, 10, 15, 19, 20, 100)] == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 5.0, 5.0]


def test_linear_interpolation_and_holds():
    s = parse_schedule({"keys": [[10, 0.0], [20, 1.0], [30, -1.0]]}, "w")  # linear is the default
    assert s.interpolation == "linear"
    assert s(0) == 0.0  # hold before the first key
    assert s(10) == 0.0
    assert s(12.5) == 0.25
    assert s(20) == 1.0
    assert s(25) == 0.0
    assert s(27.5) == -0.5
    assert s(30) == -1.0
    assert s(1000) == -1.0  # hold after the last key
    assert not s.is_constant


def test_log_interpolation():
    s = parse_schedule({"interpolation": "log", "keys": [[0, 1.0e-8], [10, 1.0e-2]]}, "lr")
    assert s(0) == pytest.approx(1.0e-8, rel=1e-12)
    # half-way in log space: sqrt(1e-8 · 1e-2) = 1e-5; a quarter: 1e-8 · 10^(6/4) = 3.1622776601683795e-07
    assert s(5) == pytest.approx(1.0e-5, rel=1e-12)
    assert s(2.5) == pytest.approx(3.1622776601683795e-07, rel=1e-12)
    assert s(10) == pytest.approx(1.0e-2, rel=1e-12)


def test_smooth_minimum_jerk_values():
    assert minimum_jerk(0.0) == 0.0
    assert minimum_jerk(1.0) == 1.0
    assert minimum_jerk(0.5) == 0.5
    # 10/64 - 15/256 + 6/1024 = 0.103515625
    assert minimum_jerk(0.25) == pytest.approx(0.103515625, abs=1e-15)
    assert minimum_jerk(0.75) == pytest.approx(1.0 - 0.103515625, abs=1e-15)
    s = parse_schedule({"interpolation": "smooth", "keys": [[0, 0.0], [100, 1.0]]}, "w")
    assert s(50) == pytest.approx(0.5, abs=1e-15)
    assert s(25) == pytest.approx(0.103515625, abs=1e-15)
    s2 = parse_schedule({"interpolation": "smooth", "keys": [[100, 2.0], [200, 10.0]]}, "w")
    assert s2(125) == pytest.approx(2.0 + 8.0 * 0.103515625, abs=1e-12)  # 2.828125
    assert s2(50) == 2.0 and s2(300) == 10.0


def test_smooth_starts_and_ends_at_rest():
    s = parse_schedule({"interpolation": "smooth", "keys": [[0, 0.0], [100, 1.0]]}, "w")
    # zero velocity at the keys: a 1-step move is ~10·(1/100)³ = 1e-5, where linear would move 1e-2
    assert 0.0 < s(1) < 1.1e-5
    assert 0.0 < 1.0 - s(99) < 1.1e-5


def test_relative_keys():
    s = parse_schedule({"keys": [[0, 1.0], ["+10", 2.0], ["+5", 3.0], [40, 4.0]]}, "w")
    assert s.steps == (0.0, 10.0, 15.0, 40.0)
    assert s(12.5) == 2.5


def test_relative_keys_from_yaml():
    spec = yaml.safe_load("{interpolation: log, keys: [[0, 1.0e-8], [10, 1.0e-2], ['+740', 1.0e-1]]}")
    s = parse_schedule(spec, "lr")
    assert s.steps == (0.0, 10.0, 750.0)


def test_to_dict_round_trip():
    spec = {"interpolation": "smooth", "keys": [[0.0, 1.0], [10.0, 2.0]]}
    s = parse_schedule(spec, "w")
    assert s.to_dict() == spec
    assert parse_schedule(s.to_dict(), "w") == s


@pytest.mark.parametrize(
    "spec, pattern",
    [
        ({"keys": [[10, 1.0], [5, 2.0]]}, r"w\.keys\[1\]: steps must increase, got 5\.0 after 10\.0"),
        ({"keys": [[10, 1.0], [10, 2.0]]}, r"w\.keys\[1\]: steps must increase"),
        ({"interpolation": "log", "keys": [[0, 1.0], [10, 0.0]]}, r"w\.keys\[1\]: log interpolation needs values > 0"),
        ({"interpolation": "log", "keys": [[0, -1.0], [10, 1.0]]}, r"w\.keys\[0\]: log interpolation needs values > 0"),
        ({"interpolation": "cubic", "keys": [[0, 1.0]]}, r"w\.interpolation: expected one of .*'cubic'"),
        ({"keys": [[0, 1.0]], "interp": "log"}, r"w: unknown keys \['interp'\]"),
        ({"keys": [["+5", 1.0]]}, r"w\.keys\[0\]: the first key cannot be relative"),
        ({"keys": [[0, 1.0], ["+x", 1.0]]}, r"w\.keys\[1\]: expected '\+N'"),
        ({"keys": [[-1, 1.0]]}, r"w\.keys\[0\]: steps must be >= 0"),
        ({"keys": [[0, 1.0, 2.0]]}, r"w\.keys\[0\]: expected \[step, value\]"),
        ({"keys": []}, r"w\.keys: expected a non-empty list"),
        ({"interpolation": "linear"}, r"w\.keys: expected a non-empty list"),
        ({"keys": [[0, float("nan")]]}, r"w\.keys\[0\]: expected a finite number"),
    ],
)
def test_schedule_errors(spec, pattern):
    with pytest.raises(StructuredConfigError, match=pattern):
        parse_schedule(spec, "w")


def test_string_value_as_yaml_reads_1e_minus_4():
    value = yaml.safe_load("w: 1e-4")["w"]
    assert value == "1e-4"  # the PyYAML trap the message must explain
    with pytest.raises(StructuredConfigError, match=r"regularizers\[0\]\.weight: expected a number.*write 1\.0e-4"):
        parse_schedule(value, "regularizers[0].weight")
    keys = yaml.safe_load("{keys: [[0, 1e-4], [10, 1.0e-2]]}")
    with pytest.raises(StructuredConfigError, match=r"lr\.keys\[0\]: expected a number, got '1e-4'.*1\.0e-4"):
        parse_schedule(keys, "lr")


def test_bool_and_non_finite_constants_are_rejected():
    with pytest.raises(StructuredConfigError, match="w: expected a number"):
        parse_schedule(True, "w")
    with pytest.raises(StructuredConfigError, match="w: expected a finite number"):
        parse_schedule(math.inf, "w")


def test_known_interpolations():
    assert set(INTERPOLATIONS) == {"step", "linear", "log", "smooth"}
