"""Lose nothing: SIGKILL, Ctrl-C and a concurrent run never leave a partial or damaged release.

`pipeline run` runs in a subprocess on the digits config and is killed at
known points, found by polling its staging folder
(``<release.dir>/.staging/<name>-<stamp>-<pid>/``) or its progress lines. The
verify and release stages take milliseconds on digits, so those two points
use the test hook ``PIPELINE_TEST_PAUSE_AT`` (pipeline/testhooks.py), which
sleeps at the start of the named stage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nhle_pipeline.pipeline.release.files import MANIFEST
from nhle_pipeline.pipeline.release.manifest import file_digests
from tests.conftest import digits_config, write_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NAME = "digits-test"
POLL_S = 0.005
REACH_TIMEOUT_S = 120  # time for a run to reach a kill point on a loaded 2-core machine
RUN_TIMEOUT_S = 180
TRIES = 3  # per kill point


def subprocess_env(**extra: str) -> dict[str, str]:
    """The repo importable; one intra-op thread (on a busy 2-core machine, torch's spinning
    thread pool makes these tiny runs several times slower)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("PIPELINE_TEST_PAUSE_AT", None)  # an outer setting never leaks in; ``extra`` may set one
    return {**env, **extra}


class Run:
    """One `pipeline run` subprocess with its stdout/stderr in files."""

    def __init__(self, cfg: Path, logs: Path, *args: str, pause_at: str | None = None) -> None:
        env = subprocess_env(**({"PIPELINE_TEST_PAUSE_AT": pause_at, "PIPELINE_TEST_PAUSE_S": "120"} if pause_at else {}))
        logs.mkdir(parents=True, exist_ok=True)
        n = len(list(logs.glob("*.out")))
        self.out, self.err = logs / f"{n}.out", logs / f"{n}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                # --no-cache: the baseline kill point waits for the original's export
                [sys.executable, "-m", "nhle_pipeline.pipeline", "run", str(cfg), "--no-cache", *args],
                stdout=out, stderr=err, env=env, cwd=logs,
                # a test run started in the background (nohup, `cmd &`) inherits SIGINT ignored;
                # the run under test must see Ctrl-C as a user's terminal delivers it
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )

    def staging(self, release_dir: Path) -> Path | None:
        found = list((release_dir / ".staging").glob(f"{NAME}-*-{self.proc.pid}"))
        return found[0] if found else None

    def stdout(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8", errors="replace")

    def wait_until(self, reached: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + REACH_TIMEOUT_S
        while not reached():
            if self.proc.poll() is not None:
                pytest.fail(f"run ended (exit {self.proc.returncode}) before {what}:\n{self.stdout()}\n{self.stderr()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"run did not reach {what} in {REACH_TIMEOUT_S}s:\n{self.stdout()}")
            time.sleep(POLL_S)

    def finish(self) -> int:
        return self.proc.wait(timeout=RUN_TIMEOUT_S)


def tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder``: relative path -> (size, content)."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_complete_release(release: Path) -> None:
    """The folder holds exactly the files its manifest lists, with their sha256s."""
    m = json.loads((release / MANIFEST).read_text())
    assert m["status"] == "released" and m["passed"] is True
    assert m["files"] == file_digests(release)
    assert "model.onnx" in m["files"]


def assert_no_partial_release(rel: Path, before: dict | None) -> None:
    """Only the staging area and (unchanged) the earlier release, if there was one."""
    assert {p.name for p in rel.iterdir()} <= {".staging", NAME}
    if before is None:
        assert not (rel / NAME).exists(), "a killed run left a release behind"
    else:
        assert tree(rel / NAME) == before, "a killed run changed the earlier release"


def rerun_succeeds(cfg: Path, logs: Path, rel: Path, force: bool) -> dict:
    r = Run(cfg, logs, *(["--force"] if force else []))
    assert r.finish() == 0, r.stdout() + r.stderr()
    assert_complete_release(rel / NAME)
    return tree(rel / NAME)


@pytest.fixture()
def setup(tmp_path, digits_weights):
    rel = tmp_path / "releases"
    cfg = write_config(tmp_path / "run.yaml", digits_config(digits_weights, rel))
    return cfg, rel, tmp_path / "logs"


def _staged(r: Run, rel: Path, relpath: str) -> Callable[[], bool]:
    def reached() -> bool:
        s = r.staging(rel)
        return s is not None and (s / relpath).exists()

    return reached


def _printed(r: Run, line_start: str) -> Callable[[], bool]:
    return lambda: any(ln.startswith(line_start) for ln in r.stdout().splitlines())


# (signal, the stage it lands in, PIPELINE_TEST_PAUSE_AT, how to know the run got there)
KILL_POINTS = [
    (signal.SIGKILL, "baseline", None, lambda r, rel: _staged(r, rel, ".work/original.onnx")),
    (signal.SIGKILL, "export", None, lambda r, rel: _staged(r, rel, "model.onnx")),
    (signal.SIGKILL, "verify", "verify", lambda r, rel: _printed(r, "✓ export")),
    (signal.SIGKILL, "release", "release", lambda r, rel: _printed(r, "✓ verify")),
    # Ctrl-C once the original has been measured: paused at the start of NHLE, which takes a few
    # steps since 0.5 (polling for the end of the baseline could land after the run exited 0)
    (signal.SIGINT, "nhle", "nhle", lambda r, rel: _printed(r, "✓ baseline")),
]


def interrupt(cfg: Path, logs: Path, rel: Path, before: dict | None, sig, stage, pause, reached) -> bool:
    """One run stopped by ``sig`` once it reached ``stage``; the guarantees hold. True if it landed in ``stage``."""
    r = Run(cfg, logs, *(["--force"] if before is not None else []), pause_at=pause)
    r.wait_until(reached(r, rel), f"the {stage} stage")
    r.proc.send_signal(sig)
    code = r.finish()
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:  # Ctrl-C: exit 130 and one line saying so
        assert code == 130, r.stdout() + r.stderr()
        err = [ln for ln in r.stderr().splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("error: interrupted; nothing was released"), r.stderr()
        assert "Traceback" not in r.stdout() + r.stderr()
    assert_no_partial_release(rel, before)
    if sig == signal.SIGKILL:  # nothing can clean up after SIGKILL: what it wrote stays in staging only
        assert r.staging(rel) is not None
    else:  # Ctrl-C removes the half-made staging folder
        assert r.staging(rel) is None
    return not _printed(r, f"✓ {stage}")()


def test_kill_or_ctrl_c_at_each_stage_leaves_no_partial_release_and_a_rerun_succeeds(setup):
    """Chained: each re-run's release is the earlier release the next interrupted run (--force) must not touch."""
    cfg, rel, logs = setup
    before = None  # no release yet for the first kill
    for sig, stage, pause, reached in KILL_POINTS:
        # export is found by polling for model.onnx: a starved test process can see it
        # only after the stage ended; such a late kill still must lose nothing, then retry
        for _ in range(TRIES):
            if interrupt(cfg, logs, rel, before, sig, stage, pause, reached):
                break
        else:
            pytest.fail(f"{sig.name} never landed inside '{stage}' in {TRIES} tries")
        before = rerun_succeeds(cfg, logs, rel, force=before is not None)


def test_two_runs_racing_for_one_name_one_wins_the_other_fails_cleanly(setup):
    cfg, rel, logs = setup
    runs = [Run(cfg, logs), Run(cfg, logs)]
    codes = [r.finish() for r in runs]
    assert sorted(codes) == [0, 2], [r.stdout() + r.stderr() for r in runs]
    loser = runs[codes.index(2)]
    err = [ln for ln in loser.stderr().splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: release"), loser.stderr()
    assert "already exists" in err[0] or "appeared while this run was working" in err[0]
    assert "Traceback" not in loser.stdout() + loser.stderr()
    assert {p.name for p in rel.iterdir()} - {".staging"} == {NAME}
    assert not (rel / ".staging").exists() or list((rel / ".staging").iterdir()) == []  # the loser cleaned up
    assert_complete_release(rel / NAME)
    v = subprocess.run(
        [sys.executable, "-m", "nhle_pipeline.pipeline", "verify", str(rel / NAME)], capture_output=True, text=True,
        env=subprocess_env(), timeout=RUN_TIMEOUT_S,
    )
    assert v.returncode == 0 and "verdict: pass" in v.stdout, v.stdout + v.stderr

    # two --force runs racing to replace it: both succeed (each swap is one atomic exchange),
    # one complete release stays, nothing else is left behind
    runs = [Run(cfg, logs, "--force"), Run(cfg, logs, "--force")]
    codes = [r.finish() for r in runs]
    assert codes == [0, 0], [r.stdout() + r.stderr() for r in runs]
    assert {p.name for p in rel.iterdir()} - {".staging"} == {NAME}
    assert not (rel / ".staging").exists() or list((rel / ".staging").iterdir()) == []
    assert_complete_release(rel / NAME)


def test_ctrl_c_that_a_library_turns_into_its_own_error_still_exits_130(tmp_path, monkeypatch):
    """onnxruntime's lazy import re-raises a Ctrl-C as ImportError('initialization failed')."""
    from click.testing import CliRunner

    import nhle_pipeline.verify.ort
    from nhle_pipeline.pipeline.cli import cli

    def interrupted_import(path):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise ImportError("initialization failed") from e

    monkeypatch.setattr(nhle_pipeline.verify.ort, "read_metadata", interrupted_import)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    r = CliRunner().invoke(cli, ["inspect", str(model)])
    assert r.exit_code == 130 and r.stderr.startswith("error: interrupted; nothing was released"), r.output


def test_sigterm_unwinds_like_ctrl_c_with_exit_143(setup):
    """docker stop / Kubernetes / a cancelled CI job send SIGTERM: one line, exit 143, nothing released."""
    cfg, rel, logs = setup
    before = rerun_succeeds(cfg, logs, rel, force=False)
    r = Run(cfg, logs, "--force", pause_at="release")  # inside --force's swap stage
    r.wait_until(_printed(r, "✓ verify"), "the release stage")
    r.proc.send_signal(signal.SIGTERM)
    assert r.finish() == 143, r.stdout() + r.stderr()
    err = [ln for ln in r.stderr().splitlines() if ln.strip()]
    assert err == ["error: terminated (SIGTERM); nothing was released and nothing half-made was kept"]
    assert_no_partial_release(rel, before)
    assert r.staging(rel) is None
