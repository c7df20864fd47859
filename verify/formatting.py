"""The one way a metric or gate value is written for people (terminal, report.md, report.html)."""

from __future__ import annotations

import math


def format_value(v, float_spec: str = ".4f", booleans: tuple[str, str] = ("yes", "no")) -> str:
    """"n/a" for missing/NaN, words for booleans, floats by ``float_spec``, anything else as str."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, bool):
        return booleans[0] if v else booleans[1]
    if isinstance(v, float):
        return format(v, float_spec)
    return str(v)


def format_gate_value(v) -> str:
    """A gate's value or threshold: 4 significant digits, booleans as true/false (-0 is 0)."""
    if isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if isinstance(v, float) and v == 0.0:
        v = 0.0  # a threshold of -0.0 (acc_r_drop_max 0) reads "0", not "-0"
    return format_value(v, ".4g", ("true", "false"))
