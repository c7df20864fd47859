"""Names the project takes from a config or a data set (class names, class folders, MLflow
experiment and run names) are printable text: no control character (newline, tab, NUL,
ESC...), no line or paragraph separator, no bidirectional control. Each would break a
one-name-per-line file (Triton's ``labels.txt``), a report table, the one-line error
contract or the terminal, or make a name read differently on screen than it is
("Trojan source")."""

from __future__ import annotations

import unicodedata

# Bidirectional embeddings, overrides, isolates and marks (U+202A-U+202E, U+2066-U+2069,
# LRM, RLM, ALM): they reorder how the text around them is displayed.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_SHOWN = 60


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be taken as a name, or None."""
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in BIDI_CONTROLS:
            shown = repr(name if len(name) <= _SHOWN else name[:_SHOWN] + "...")
            return f"{shown} holds the control character U+{ord(ch):04X}; expected printable text"
    return None
