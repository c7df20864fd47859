"""docs/reference/metrics.md's table, generated from the metrics' definitions (verify/definitions.py):

    python -m nhle_pipeline.pipeline.metrics_reference --write docs/reference/metrics.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nhle_pipeline.pipeline.docs_tables import replace_between, write_or_print
from nhle_pipeline.verify.definitions import DEFINITIONS

TABLE_START = ("<!-- metrics table: generated from verify/definitions.py by "
               "`python -m nhle_pipeline.pipeline.metrics_reference --write docs/reference/metrics.md` -->")
TABLE_END = "<!-- end of metrics table -->"


def markdown_table() -> str:
    rows = [f"| {name} | {text.replace('|', chr(92) + '|')} |" for name, text in DEFINITIONS]
    return "\n".join([TABLE_START, "", "| metric | definition |", "| --- | --- |", *rows, "", TABLE_END])


def with_table(doc: str) -> str:
    """``doc`` (docs/reference/metrics.md's text) with its generated table replaced by today's."""
    return replace_between(doc, TABLE_START, TABLE_END, markdown_table())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, metavar="PAGE", help="replace the table in PAGE")
    return write_or_print(parser.parse_args(argv).write, markdown_table, with_table)


if __name__ == "__main__":
    raise SystemExit(main())
