"""The `<tag> <op> <number>` grammar: parsing, unknown values, hysteresis."""

import math

import numpy as np
import pytest

from controller.conditions import ArrayTagView, Condition


@pytest.mark.parametrize(("text", "tag", "op", "value"), [
    ("motor_speed > 100", "motor_speed", ">", 100.0),
    ("line_stop==1", "line_stop", "==", 1.0),
    ("  t <= -3.5e1 ", "t", "<=", -35.0),
    ("run != false", "run", "!=", 0.0),
    ("Conveyor.Speed >= 2", "Conveyor.Speed", ">=", 2.0),
])
def test_parse(text, tag, op, value):
    assert Condition.parse(text) == Condition(tag, op, value)


@pytest.mark.parametrize("text", ["speed >> 3", "speed > fast", "> 3", "speed 3", "speed > nan",
                                  "speed > inf", "speed > 1 and x < 2", "__import__('os') == 1", ""])
def test_parse_rejects(text):
    with pytest.raises(ValueError, match="expected|number|finite"):
        Condition.parse(text)


@pytest.mark.parametrize(("op", "x", "expected"), [
    (">", 5.0, False), (">", 5.1, True), (">=", 5.0, True), ("<", 5.0, False), ("<=", 5.0, True),
    ("==", 5.0, True), ("!=", 5.0, False), ("!=", 4.0, True),
])
def test_holds(op, x, expected):
    assert Condition("t", op, 5.0).holds(x) is expected


@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">="])
def test_unknown_never_holds(op):
    assert not Condition("t", op, 5.0).holds(math.nan)
    assert not Condition("t", op, 5.0).evaluate({})


def test_deadband_hysteresis():
    hi, lo = Condition("t", ">", 80.0), Condition("t", "<", 10.0)
    assert not hi.holds(79.0) and hi.holds(79.0, active=True, deadband=2.0) and not hi.holds(77.9, True, 2.0)
    assert not lo.holds(11.0) and lo.holds(11.0, active=True, deadband=2.0) and not lo.holds(12.1, True, 2.0)


def test_str_round_trips():
    c = Condition.parse("motor_speed>100.5")
    assert str(c) == "motor_speed > 100.5" and Condition.parse(str(c)) == c


def test_array_tag_view():
    v = ArrayTagView({"a": 1, "b": 0}, np.array([1.5, 2.5]))
    assert dict(v) == {"a": 2.5, "b": 1.5} and len(v) == 2 and v.get("zz", math.nan) != v.get("zz", math.nan)
