import os

import pytest

from nhle_pipeline.pipeline.paths import folder_problem


def test_existing_or_creatable_folders_are_fine(tmp_path):
    assert folder_problem(tmp_path) is None
    assert folder_problem(tmp_path / "a" / "b" / "c") is None
    assert folder_problem(str(tmp_path / "new")) is None  # a str works too


def test_a_file_on_the_way_is_named(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert folder_problem(f) == f"'{f}' is a file, not a folder"
    assert folder_problem(f / "sub" / "dir") == f"'{f}' is a file, not a folder"


def test_unwritable_ancestor_is_named(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    asked = []

    def no_write(path, mode):
        asked.append((os.fspath(path), mode))
        return False

    monkeypatch.setattr(os, "access", no_write)
    assert folder_problem(locked / "release" / "x") == f"'{locked}' is not writable"
    assert asked == [(str(locked), os.W_OK | os.X_OK)]  # checked on the nearest existing ancestor


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_folder_for_real(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert folder_problem(locked / "x") == f"'{locked}' is not writable"
    finally:
        locked.chmod(0o700)


def test_a_dangling_symlink_on_the_way_is_a_problem(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):  # what creating the folder then does
        (link / "release").mkdir(parents=True)
    assert folder_problem(link / "release") is not None
