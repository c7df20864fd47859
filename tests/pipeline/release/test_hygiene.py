"""Release folder hygiene (pipeline/release/check_structure.py): plain files and folders only, nothing
unlisted, nothing read outside the release."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nhle_pipeline.pipeline.errors import TamperedReleaseError
from nhle_pipeline.pipeline.release.check_structure import (
    check_files,
    external_locations,
    scan_release,
)
from nhle_pipeline.pipeline.release.manifest import FileDigest, file_digests
from tests.manifests import sample_manifest


def _release(tmp_path) -> tuple[Path, object]:
    rel = tmp_path / "rel"
    (rel / "triton" / "demo" / "1").mkdir(parents=True)
    (rel / "model.onnx").write_bytes(b"model")
    (rel / "triton" / "demo" / "1" / "model.onnx").write_bytes(b"model")
    (rel / "manifest.json").write_text("{}")
    m = sample_manifest()
    m.files = {k: FileDigest.model_validate(v) for k, v in file_digests(rel).items()}
    return rel, m


def test_plain_files_and_their_folders_pass(tmp_path):
    rel, m = _release(tmp_path)
    (rel / "release.sig").write_text("{}")  # the signature is the one unlisted file
    tree = scan_release(rel)
    assert tree.dirs == {"triton", "triton/demo", "triton/demo/1"}
    check_files(rel, m, tree)


@pytest.mark.parametrize("plant, message", [
    (lambda rel, out: (rel / "triton" / "demo" / "2").symlink_to(out, target_is_directory=True), "2: a symbolic link"),
    (lambda rel, out: ((rel / "model.onnx").unlink(), (rel / "model.onnx").symlink_to(out / "f")), "model.onnx: a symbolic link"),
    (lambda rel, out: (rel / "dangling").symlink_to(out / "absent"), "dangling: a symbolic link"),
    (lambda rel, out: os.mkfifo(rel / "pipe"), "pipe: not a plain file"),
])
def test_links_and_special_files_are_refused_anywhere(tmp_path, plant, message):
    rel, _ = _release(tmp_path)
    out = tmp_path / "outside"
    out.mkdir()
    (out / "f").write_bytes(b"model")
    plant(rel, out)
    with pytest.raises(TamperedReleaseError, match=message):
        scan_release(rel)


@pytest.mark.parametrize("plant, message", [
    (lambda rel: (rel / "triton" / "demo" / "2").mkdir(), "demo/2: a folder no listed file is in"),
    (lambda rel: (rel / "empty").mkdir(), "empty: a folder no listed file is in"),
    (lambda rel: ((rel / ".work").mkdir(), (rel / ".work" / "x").write_text("x")), ".work/x: not listed"),
    (lambda rel: (rel / ".gitignore").write_text("x"), ".gitignore: not listed"),
])
def test_unlisted_files_and_folders_are_refused(tmp_path, plant, message):
    rel, m = _release(tmp_path)
    plant(rel)
    with pytest.raises(TamperedReleaseError, match=message):
        check_files(rel, m)


def _model_with_external_data(path: Path, location: str) -> Path:
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializer=[w])
    onnx.save_model(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../x", "C:\\x.bin", "a/b.bin"])
def test_external_data_must_sit_beside_the_model(tmp_path, location):
    with pytest.raises(TamperedReleaseError, match="is not a file beside the model"):
        external_locations(_model_with_external_data(tmp_path / "model.onnx", location))


def test_external_data_beside_the_model_is_named(tmp_path):
    assert external_locations(_model_with_external_data(tmp_path / "model.onnx", "model.onnx.data")) == ["model.onnx.data"]
