import os

import pytest

from nhle_pipeline.pipeline.errors import ReleaseError
from nhle_pipeline.pipeline.release.manifest import file_digests
from nhle_pipeline.pipeline.release.staging import check_target, create_staging, publish


def staged(root, name, text):
    s = create_staging(root, name)
    (s / "model.onnx").write_text(text)
    (s / ".work" / "scratch.onnx").write_text("scratch")
    return s


def test_publish_moves_complete_folder_and_drops_scratch(tmp_path):
    target = check_target(tmp_path / "rel", "m", force=False)
    out = publish(staged(tmp_path / "rel", "m", "v1"), target, force=False)
    assert out == tmp_path / "rel" / "m"
    assert (out / "model.onnx").read_text() == "v1"
    assert not (out / ".work").exists()
    assert list((tmp_path / "rel" / ".staging").iterdir()) == []


def test_existing_release_needs_force_and_force_replaces(tmp_path):
    root = tmp_path / "rel"
    publish(staged(root, "m", "v1"), root / "m", force=False)
    with pytest.raises(ReleaseError, match="already exists; use --force"):
        check_target(root, "m", force=False)
    s2 = staged(root, "m", "v2")
    with pytest.raises(ReleaseError, match="already exists"):
        publish(s2, root / "m", force=False)
    assert (root / "m" / "model.onnx").read_text() == "v1"
    publish(s2, root / "m", force=True)
    assert (root / "m" / "model.onnx").read_text() == "v2"
    assert sorted(p.name for p in (root / ".staging").iterdir()) == []


def test_release_dir_that_is_a_file_or_unwritable(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ReleaseError, match="is not a folder"):
        check_target(f, "m", force=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write anywhere")
        with pytest.raises(ReleaseError, match="not writable"):
            check_target(ro / "releases", "m", force=False)
    finally:
        ro.chmod(0o700)


def test_file_digests_cover_every_file_but_manifest_and_scratch(tmp_path):
    s = staged(tmp_path, "m", "abc")
    (s / "manifest.json").write_text("{}")
    (s / "sub").mkdir()
    (s / "sub" / "x.txt").write_text("x")
    d = file_digests(s)
    assert sorted(d) == ["model.onnx", "sub/x.txt"]
    assert d["model.onnx"]["bytes"] == 3
    assert d["model.onnx"]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
