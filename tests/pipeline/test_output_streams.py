"""Output to a reader that went away, or to a closed descriptor, never crashes a command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nhle_pipeline.pipeline.output import SafeStream
from tests.onnx_models import tiny_onnx

PIPELINE = [sys.executable, "-m", "nhle_pipeline.pipeline"]


def closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone: every write is EPIPE."""
    r, w = os.pipe()
    os.close(r)
    return w


def test_safe_stream_swallows_epipe_and_keeps_its_descriptor_writable():
    w = closed_pipe()
    saved = os.dup(w)
    stream = SafeStream(os.fdopen(w, "w", buffering=1), w)
    try:
        assert stream.write("x" * 10) == 10  # line-buffered: nothing written yet
        stream.write("\n")  # EPIPE here: dropped, the descriptor now points at /dev/null
        assert stream.gone
        stream.write("more\n")
        stream.flush()
        os.write(w, b"still open")  # /dev/null accepts it: the exit-time flush cannot fail
    finally:
        os.close(saved)


def test_safe_stream_raises_other_errors():
    class Full:
        def write(self, text):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        SafeStream(Full(), 99).write("x")


def _run(args, **kw):
    return subprocess.run([*PIPELINE, *map(str, args)], capture_output=False, text=True, timeout=300, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["inspect", "MODEL"], ["inspect", "--json", "MODEL"], ["--help"], ["--version"], ["run", "--help"],
])
def test_commands_writing_into_a_closed_pipe_exit_with_their_own_code(tmp_path, args):
    model = tiny_onnx(tmp_path / "m.onnx")
    args = [model if a == "MODEL" else a for a in args]
    w = closed_pipe()
    try:
        r = _run(args, stdout=w, stderr=subprocess.PIPE)
    finally:
        os.close(w)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr and r.stderr == ""


@pytest.mark.slow
def test_stdout_and_stderr_both_closed_keep_the_bad_input_exit_code(tmp_path):
    w = closed_pipe()
    try:
        bad = _run(["inspect", tmp_path / "missing.onnx"], stdout=w, stderr=w)
        good = _run(["init", tmp_path / "p.yaml"], stdout=w, stderr=w)
    finally:
        os.close(w)
    assert bad.returncode == 2
    assert good.returncode == 0 and (tmp_path / "p.yaml").is_file()  # the work was done


@pytest.mark.slow
def test_closed_stdout_descriptor(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    r = _run(["inspect", model], stdout=None, stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1))
    assert r.returncode == 0 and r.stderr == ""


@pytest.mark.slow
def test_head_of_a_shell_pipeline(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    cmd = " ".join(PIPELINE) + f" inspect --json {model} | head -1; echo rc=${{PIPESTATUS[0]}}"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert r.stdout.splitlines() == ["{", "rc=0"], r.stdout + r.stderr
    assert r.stderr == ""
