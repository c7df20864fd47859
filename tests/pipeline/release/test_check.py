"""The release check's first two steps on hand-made release folders: the manifest and the files."""

from __future__ import annotations

import json

import pytest

from nhle_pipeline.pipeline.errors import ReleaseError, TamperedReleaseError
from nhle_pipeline.pipeline.release.check_structure import check_files, read_manifest
from nhle_pipeline.pipeline.release.files import MANIFEST
from nhle_pipeline.pipeline.release.manifest import MANIFEST_SEAL, file_digests, manifest_seal
from tests.manifests import sample_manifest


def _release(tmp_path, edit=None, reseal=True):
    rel = tmp_path / "rel"
    rel.mkdir()
    (rel / "model.onnx").write_bytes(b"model")
    (rel / "report.md").write_text("# report\n")
    data = sample_manifest().to_json_dict()
    data["files"] = file_digests(rel)
    if edit:
        edit(data)
    if reseal:
        data[MANIFEST_SEAL] = manifest_seal(data)
    (rel / MANIFEST).write_text(json.dumps(data))
    return rel


def test_a_sealed_release_reads_and_its_files_check(tmp_path):
    rel = _release(tmp_path)
    m = read_manifest(rel)
    assert m.name == "demo" and sorted(m.files) == ["model.onnx", "report.md"]
    check_files(rel, m)


def test_an_unsealed_or_edited_manifest_is_tampered(tmp_path):
    rel = _release(tmp_path, reseal=False)
    with pytest.raises(TamperedReleaseError, match="edited after release"):
        read_manifest(rel)


def test_a_resealed_manifest_of_the_wrong_shape_is_tampered_not_a_crash(tmp_path):
    rel = _release(tmp_path, edit=lambda d: d["metrics"]["original"].__setitem__("acc_r", None))
    with pytest.raises(TamperedReleaseError, match="field 'metrics.original.acc_r'"):
        read_manifest(rel)


@pytest.mark.parametrize("change, message", [
    (lambda rel: (rel / "model.onnx").write_bytes(b"other"), "sha256 differs"),
    (lambda rel: (rel / "extra.txt").write_text("x"), "not listed in the manifest"),
    (lambda rel: (rel / "report.md").unlink(), "listed in the manifest but missing"),
])
def test_changed_added_or_missing_files_are_tampering(tmp_path, change, message):
    rel = _release(tmp_path)
    m = read_manifest(rel)
    change(rel)
    with pytest.raises(TamperedReleaseError, match=message):
        check_files(rel, m)


def test_not_a_release_folder(tmp_path):
    with pytest.raises(ReleaseError, match="no such release folder"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(ReleaseError, match="manifest.json: missing"):
        read_manifest(tmp_path)
