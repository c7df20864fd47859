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


def test_force_trades_places_atomically_a_reader_never_finds_the_release_missing(tmp_path):
    import threading

    from nhle_pipeline.pipeline.release import staging as release

    if release._RENAMEAT2 is None:
        pytest.skip("renameat2 is not available here: --force falls back to two renames")
    root = tmp_path / "rel"
    publish(staged(root, "m", "v0"), root / "m", force=False)
    seen, missing, stop = set(), [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add((root / "m" / "model.onnx").read_text())
            except FileNotFoundError:
                missing.append(1)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 41):
            publish(staged(root, "m", f"v{i}"), root / "m", force=True)
    finally:
        stop.set()
        reader.join()
    assert missing == []  # never a moment without a release at the path
    assert (root / "m" / "model.onnx").read_text() == "v40" and len(seen) > 1
    assert list((root / ".staging").iterdir()) == []  # every replaced release deleted


def test_two_interleaved_force_publishes_both_succeed_and_one_complete_release_stays(tmp_path):
    import threading

    root = tmp_path / "rel"
    publish(staged(root, "m", "v0"), root / "m", force=False)
    folders = {w: [staged(root, "m", f"{w}{i}") for i in range(20)] for w in "ab"}
    errors: list[BaseException] = []

    def worker(w: str) -> None:
        for s in folders[w]:
            try:
                publish(s, root / "m", force=True)
            except BaseException as e:  # noqa: BLE001 - the test reports any
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (root / "m" / "model.onnx").read_text() in {"a19", "b19"}
    assert sorted(p.name for p in root.iterdir()) == [".staging", "m"]
    assert list((root / ".staging").iterdir()) == []


def test_without_renameat2_ctrl_c_between_the_two_renames_restores_the_old_release(tmp_path, monkeypatch):
    """The fallback (no RENAME_EXCHANGE): the old release is moved aside, then the new one renamed in."""
    from nhle_pipeline.pipeline.release import staging as release

    monkeypatch.setattr(release, "_RENAMEAT2", None)
    root = tmp_path / "rel"
    publish(staged(root, "m", "v1"), root / "m", force=False)
    new = staged(root, "m", "v2")
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new release's rename: the user presses Ctrl-C just then
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(release.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        publish(new, root / "m", force=True)
    monkeypatch.setattr(release.os, "rename", real_rename)
    assert (root / "m" / "model.onnx").read_text() == "v1"
    assert (new / "model.onnx").read_text() == "v2"  # the new one stays in staging
    publish(new, root / "m", force=True)  # and the fallback swap works
    assert (root / "m" / "model.onnx").read_text() == "v2"
    assert list((root / ".staging").iterdir()) == []


def test_a_symlink_at_the_release_path_is_refused_before_any_work(tmp_path):
    root = tmp_path / "rel"
    root.mkdir()
    (root / "m").symlink_to(tmp_path / "nowhere")
    for force in (False, True):
        with pytest.raises(ReleaseError, match="is a symbolic link"):
            check_target(root, "m", force=force)
    (root / ".staging").symlink_to(tmp_path)
    with pytest.raises(ReleaseError, match=r"\.staging' is a symbolic link"):
        check_target(root, "n", force=False)


def test_a_staging_folder_on_another_filesystem_is_refused_before_any_work(tmp_path):
    import subprocess

    root = tmp_path / "rel"
    (root / ".staging").mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root / ".staging")],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root in a namespace that allows it)")
    try:
        with pytest.raises(ReleaseError, match="on another filesystem"):
            check_target(root, "m", force=False)
    finally:
        subprocess.run(["umount", str(root / ".staging")], check=True)


def test_discard_staging_removes_the_run_and_an_empty_staging_area(tmp_path):
    from nhle_pipeline.pipeline.release.staging import discard_staging

    root = tmp_path / "rel"
    a, b = staged(root, "a", "x"), staged(root, "b", "y")
    discard_staging(a)
    assert not a.exists() and b.exists()
    discard_staging(b)
    assert not (root / ".staging").exists() and root.exists()
