"""torchrun with 2 CPU processes on loopback (gloo): the same release as one process,
a launch that cannot form its group fails in one line, a dead rank releases nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import digits_config, write_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


def _env(**extra: str) -> dict[str, str]:
    # One thread everywhere: PyTorch's float sums depend on the thread count, and torchrun
    # sets OMP_NUM_THREADS=1 in its workers; the single-process run must match it.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return {**env, **extra}


def _torchrun(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "nhle_pipeline.pipeline", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT_S, cwd=REPO)


def _single(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nhle_pipeline.pipeline", *args], capture_output=True,
                          text=True, env=env, timeout=TIMEOUT_S, cwd=REPO)


def test_two_processes_release_what_one_process_releases(tmp_path, digits_weights):
    cfg = write_config(tmp_path / "run.yaml", digits_config(digits_weights, tmp_path / "unused"))
    one = _single("run", str(cfg), "--no-cache", "--out", str(tmp_path / "one"), env=_env())
    two = _torchrun("run", str(cfg), "--no-cache", "--out", str(tmp_path / "two"), env=_env())
    assert one.returncode == 0, one.stdout + one.stderr
    assert two.returncode == 0, two.stdout + two.stderr
    a, b = tmp_path / "one" / "digits-test", tmp_path / "two" / "digits-test"
    assert (a / "model.onnx").read_bytes() == (b / "model.onnx").read_bytes()
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    for part in ("original", "unlearned"):
        assert ma["metrics"][part] == mb["metrics"][part]  # accuracies and per-class counts
        for key, value in ma["metrics"]["evidence"][part].items():
            assert abs(value - mb["metrics"]["evidence"][part][key]) <= 1e-6, (part, key)
    assert [(g["name"], g["passed"]) for g in ma["gates"]] == [(g["name"], g["passed"]) for g in mb["gates"]]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [".staging", "digits-test"]


def test_a_launch_that_cannot_form_its_group_fails_in_one_line(tmp_path, digits_weights):
    cfg = write_config(tmp_path / "run.yaml", digits_config(digits_weights, tmp_path / "rel"))
    r = _single("run", str(cfg), env=_env(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1",
                                          MASTER_PORT="9", PIPELINE_DIST_TIMEOUT_S="3"))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: torch.distributed: rank 1 of 2 cannot form the group")
    assert not (tmp_path / "rel").exists()
    r = _single("run", str(cfg), env=_env(WORLD_SIZE="2"))
    assert r.returncode == 2 and r.stderr.startswith("error: torchrun environment: WORLD_SIZE='2' needs integer RANK")


def test_a_rank_that_dies_releases_nothing(tmp_path, digits_weights):
    cfg = write_config(tmp_path / "run.yaml", digits_config(digits_weights, tmp_path / "rel"))
    r = _torchrun("run", str(cfg), "--no-cache", env=_env(PIPELINE_TEST_DIE_RANK="1", PIPELINE_DIST_TIMEOUT_S="60"))
    assert r.returncode != 0, r.stdout + r.stderr
    assert not (tmp_path / "rel" / "digits-test").exists()
