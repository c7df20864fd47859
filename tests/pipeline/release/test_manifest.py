"""The typed manifest: its JSON round trip, strict reading, digests and seal."""

from __future__ import annotations

import json
import math

import pytest

from nhle_pipeline.pipeline.errors import TamperedReleaseError
from nhle_pipeline.pipeline.release.files import MANIFEST, SCRATCH
from nhle_pipeline.pipeline.release.manifest import (
    MANIFEST_SEAL,
    file_digests,
    manifest_seal,
    parse_manifest,
    seal_manifest_file,
    write_manifest,
)
from tests.manifests import sample_manifest


def test_json_round_trip_keeps_nan_and_types(tmp_path):
    m = sample_manifest()
    m.metrics.evidence.unlearned = m.metrics.evidence.unlearned.model_copy(update={"probe_auc": float("nan")})
    write_manifest(tmp_path / MANIFEST, m)
    text = (tmp_path / MANIFEST).read_text()
    assert "NaN" in text and MANIFEST_SEAL not in text  # no seal until publication
    back = parse_manifest(json.loads(text), "manifest.json")
    assert math.isnan(back.metrics.evidence.unlearned.probe_auc)
    assert back.metrics.original.per_class == [0.9, 0.95, 0.97]
    assert back.gates[0].threshold == 0.01 and back.metrics.graph_unchanged is True


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["metrics"]["original"].__setitem__("acc_r", "0.96"), "metrics.original.acc_r"),
    (lambda d: d["metrics"]["unlearned"].__setitem__("acc_f", True), "metrics.unlearned.acc_f"),
    (lambda d: d.__setitem__("files", "model.onnx"), "files"),
    (lambda d: d["metrics"].pop("original"), "metrics.original"),
    (lambda d: d.__setitem__("surprise", 1), "surprise"),
    (lambda d: d["metrics"]["evidence"].__setitem__("unlearned", [1, 2]), "metrics.evidence.unlearned"),
])
def test_strict_reading_names_the_bad_field(edit, field):
    data = sample_manifest().to_json_dict()
    edit(data)
    with pytest.raises(TamperedReleaseError) as err:
        parse_manifest(data, "rel/manifest.json")
    assert str(err.value).startswith(f"rel/manifest.json: field '{field}")


def test_parse_refuses_a_non_object():
    with pytest.raises(TamperedReleaseError, match="expected a JSON object, got list"):
        parse_manifest([], "manifest.json")


def test_seal_covers_every_value_but_itself(tmp_path):
    data = sample_manifest().to_json_dict()
    seal = manifest_seal(data)
    assert manifest_seal({**data, MANIFEST_SEAL: "anything"}) == seal
    data["metrics"]["unlearned"]["acc_f"] = 0.001
    assert manifest_seal(data) != seal
    write_manifest(tmp_path / MANIFEST, sample_manifest())
    seal_manifest_file(tmp_path / MANIFEST)
    sealed = json.loads((tmp_path / MANIFEST).read_text())
    assert sealed[MANIFEST_SEAL] == manifest_seal(sealed) == seal


def test_file_digests_skip_the_manifest_and_scratch(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"abc")
    (tmp_path / "triton" / "m" / "1").mkdir(parents=True)
    (tmp_path / "triton" / "m" / "1" / "model.onnx").write_bytes(b"abc")
    (tmp_path / MANIFEST).write_text("{}")
    (tmp_path / SCRATCH).mkdir()
    (tmp_path / SCRATCH / "original.onnx").write_bytes(b"x")
    d = file_digests(tmp_path)
    assert sorted(d) == ["model.onnx", "triton/m/1/model.onnx"]
    # sha256 of b"abc"
    assert d["model.onnx"] == {"sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "bytes": 3}
