"""A full disk while a run writes: one line, exit 4, nothing released, no staging left, an
existing release intact. Once by injection (every machine), once on a real full filesystem
(a tiny tmpfs, where this test may mount one)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nhle_pipeline.pipeline.cli import EXIT_NO_SPACE, cli
from tests.conftest import digits_config, write_config

pytestmark = pytest.mark.slow


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_no_space_while_exporting_is_one_line_exit_4_and_the_staging_folder_is_removed(tmp_path, digits_weights,
                                                                                        monkeypatch):
    import nhle_pipeline.pipeline.run as run_module

    rel = tmp_path / "releases"
    cfg = write_config(tmp_path / "run.yaml", digits_config(digits_weights, rel))
    assert CliRunner().invoke(cli, ["run", str(cfg)]).exit_code == 0
    before = _tree(rel / "digits-test")

    def full(staging, name, model, **settings):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging / "triton" / name / "1" / "model.onnx"))

    monkeypatch.setattr(run_module, "write_triton_repository", full)
    r = CliRunner().invoke(cli, ["run", str(cfg), "--force"])
    assert r.exit_code == EXIT_NO_SPACE == 4, r.output
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: no space left on the device writing '"), r.stderr
    assert "Traceback" not in r.output
    assert _tree(rel / "digits-test") == before  # the earlier release untouched
    assert not (rel / ".staging").exists() or list((rel / ".staging").iterdir()) == []


def test_a_really_full_filesystem(tmp_path, digits_weights):
    rel = tmp_path / "small"
    rel.mkdir()
    # 64 KiB: the config and the staging folder fit, the release's files do not
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(rel)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root in a namespace that allows it)")
    try:
        cfg = write_config(tmp_path / "run.yaml", digits_config(digits_weights, rel))
        r = subprocess.run([sys.executable, "-m", "nhle_pipeline.pipeline", "run", str(cfg)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 4, r.stdout + r.stderr
        err = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("error: no space left on the device"), r.stderr
        assert sorted(p.name for p in rel.iterdir()) == []  # staging removed, .staging too: the space is back
    finally:
        subprocess.run(["umount", str(rel)], check=True)
