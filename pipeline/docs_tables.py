"""Tables of the docs generated from the code: a page keeps its prose, and the text between two
marker comments is replaced by today's table (config_reference.py: the config's fields;
metrics_reference.py: the metrics' definitions). Their tests fail when a committed page drifts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def replace_between(doc: str, start: str, end: str, table: str) -> str:
    """``doc`` with the text from marker ``start`` to marker ``end`` replaced by ``table`` (which
    begins and ends with the two markers)."""
    i, j = doc.find(start), doc.find(end)
    if i < 0 or j < i:
        raise ValueError(f"the page has no generated table (the markers {start!r} … {end!r})")
    return doc[:i] + table + doc[j + len(end):]


def write_or_print(page: Path | None, table: Callable[[], str], with_table: Callable[[str], str]) -> int:
    """``--write PAGE``: replace the page's table; without a page, print the table."""
    if page is not None:
        page.write_text(with_table(page.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(table())
    return 0
