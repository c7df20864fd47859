"""manifest.json's JSON Schema, generated from the manifest's pydantic model (release/manifest.py).

A deployer's own tooling can validate a release's manifest.json with it (any JSON Schema
2020-12 validator) before reading a field; ``pipeline verify`` parses the manifest with the
model itself. A test fails when the committed file drifts from the model:

    python -m nhle_pipeline.pipeline.release.manifest_schema --write pipeline/schemas/manifest.schema.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nhle_pipeline.pipeline.release.manifest import Manifest

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def manifest_schema() -> dict[str, Any]:
    """The schema of manifest.json as ``pipeline run`` and ``pipeline quantize`` write it."""
    schema = Manifest.model_json_schema(mode="serialization")
    return {"$schema": DIALECT, "title": "manifest.json of a pipeline release", **{k: v for k, v in schema.items()
                                                                                 if k != "title"}}


def schema_text() -> str:
    return json.dumps(manifest_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, metavar="FILE", help="write the schema to FILE")
    args = parser.parse_args(argv)
    if args.write:
        args.write.write_text(schema_text(), encoding="utf-8")
    else:
        print(schema_text(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
