"""The one strict JSON reader for everything the project reads from a release or a user.

``json.loads`` accepts what a forger can use: a key given twice (the last one
wins, so a reviewer reading the file sees another value than the code uses), a
number literal thousands of digits long (Python refuses to convert it with a
bare ``ValueError``), a float literal that overflows to infinity (``1e999``),
``NaN``/``Infinity`` where no number may be missing, and nesting deeper than
the parser's stack (``RecursionError``). ``loads`` refuses each of them with a
``JSONInputError``: a ``json.JSONDecodeError`` (so a ``ValueError``) whose
text says what was wrong, for the caller to put after the file's name.
"""

from __future__ import annotations

import json
import math
from typing import Any

# Longest number literal accepted: far beyond any size, seed, count or float repr (about 24
# characters) the project writes; Python's own int limit (4,300 digits) would raise ValueError.
MAX_NUMBER_CHARS = 100
_CONSTANTS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class JSONInputError(json.JSONDecodeError):
    """Not strict JSON: the message is the whole text (no line/column suffix where there is none)."""

    def __init__(self, msg: str, doc: str = "", pos: int = 0) -> None:
        super().__init__(msg, doc, pos)
        self.plain = msg

    def __str__(self) -> str:
        return self.plain

    def __reduce__(self):
        return (type(self), (self.plain, self.doc, self.pos))


def _key(key: str) -> str:
    shown = key if len(key) <= 60 else key[:57] + "..."
    return repr(shown)


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise JSONInputError(f"duplicate key {_key(k)}; an object names each key once")
        out[k] = v
    return out


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise JSONInputError(f"an integer {len(text)} digits long; at most {MAX_NUMBER_CHARS} accepted")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise JSONInputError(f"a number {len(text)} characters long; at most {MAX_NUMBER_CHARS} accepted")
    value = float(text)
    if not math.isfinite(value):  # 1e999: a finite-looking literal that is not a float
        raise JSONInputError(f"the number {text} is beyond the range of a float")
    return value


def _constant_refused(name: str) -> float:
    raise JSONInputError(f"{name} where a finite number is expected")


def loads(text: str | bytes, *, allow_nan: bool = False) -> Any:
    """``text`` parsed strictly: duplicate keys, overlong or overflowing numbers, too deep
    nesting and (unless ``allow_nan``: manifests record NaN metrics) NaN/Infinity refused
    with a ``JSONInputError``; malformed JSON is the usual ``json.JSONDecodeError``."""
    try:
        return json.loads(
            text,
            object_pairs_hook=_refuse_duplicates,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_CONSTANTS.__getitem__ if allow_nan else _constant_refused,
        )
    except RecursionError as e:
        raise JSONInputError("nested too deeply") from e
    except JSONInputError:
        raise
    except ValueError as e:  # json.JSONDecodeError (malformed), or a conversion the hooks let through
        if isinstance(e, json.JSONDecodeError):
            raise
        raise JSONInputError(str(e).splitlines()[0][:200] if str(e) else type(e).__name__) from e
