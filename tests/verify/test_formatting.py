import numpy as np
import pytest

from nhle_pipeline.verify.formatting import format_gate_value, format_value


@pytest.mark.parametrize(
    "value, expect",
    [
        (None, "n/a"),
        (float("nan"), "n/a"),
        (True, "yes"),
        (False, "no"),
        (0.123456, "0.1235"),
        (-0.035, "-0.0350"),
        (float("inf"), "inf"),
        (3, "3"),
        ("cpu", "cpu"),
        (np.float64(0.5), "0.5000"),  # numpy's float64 is a float
    ],
)
def test_format_value(value, expect):
    assert format_value(value) == expect


def test_format_value_spec_and_words():
    assert format_value(0.123456, ".2%") == "12.35%"
    assert format_value(True, ".4f", ("pass", "fail")) == "pass"
    assert format_value(float("nan"), ".2%") == "n/a"


@pytest.mark.parametrize(
    "value, expect",
    [
        (True, "true"),
        (False, "false"),
        (None, "n/a"),
        (float("nan"), "n/a"),
        (0.01, "0.01"),
        (-0.035, "-0.035"),
        (0.0123456, "0.01235"),
        (1e-3, "0.001"),
        (1.5e-5, "1.5e-05"),
        (3, "3"),  # ints go through the float spec
        (12345, "1.234e+04"),
        (float("inf"), "inf"),
    ],
)
def test_format_gate_value(value, expect):
    assert format_gate_value(value) == expect


def test_a_gate_threshold_of_minus_zero_reads_zero():
    from nhle_pipeline.verify.formatting import format_gate_value

    assert format_gate_value(-0.0) == "0" and format_gate_value(1e-6) == "1e-06" and format_gate_value(-0.035) == "-0.035"
