"""manifest.json's JSON Schema is generated from the manifest's model and committed; a real
release's manifest validates against it, a forged key does not."""

import json
from pathlib import Path

import jsonschema
import pytest

from nhle_pipeline.pipeline.release.files import MANIFEST
from nhle_pipeline.pipeline.release.manifest_schema import schema_text

COMMITTED = Path(__file__).resolve().parents[3] / "pipeline" / "schemas" / "manifest.schema.json"


def test_the_committed_schema_is_the_models():
    assert COMMITTED.read_text(encoding="utf-8") == schema_text(), (
        "pipeline/schemas/manifest.schema.json differs from the manifest's model: run `python -m "
        "nhle_pipeline.pipeline.release.manifest_schema --write pipeline/schemas/manifest.schema.json`")


def test_a_release_manifest_validates_and_an_unknown_key_does_not(digits_release):
    schema = json.loads(COMMITTED.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    manifest = json.loads((digits_release / MANIFEST).read_text(encoding="utf-8"))
    validator.validate(manifest)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**manifest, "metrics": {**manifest["metrics"], "acc_f_forged": 0.0}})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**manifest, "passed": "yes"})
