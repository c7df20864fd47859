"""Every rank exits with rank 0's code (pipeline/distributed.py): what rank 0 ended with,
carried as a verdict and raised again on another rank, meets the CLI's one exit-code table."""

from __future__ import annotations

import errno

import pytest

from nhle_pipeline.pipeline.cli import handle_errors
from nhle_pipeline.pipeline.distributed import raise_verdict, verdict_of
from nhle_pipeline.pipeline.errors import DataError, GateFailure, Terminated


def _exit_code(raise_it) -> int:
    @handle_errors
    def run():
        raise_it()

    with pytest.raises(SystemExit) as e:
        run()
    return e.value.code


def _raise(exc: BaseException):
    def go():
        raise exc
    return go


def _full_disk() -> None:
    try:
        raise OSError(errno.ENOSPC, "No space left on device", "/releases/.staging/x/model.onnx")
    except OSError as e:
        raise RuntimeError("the exporter failed") from e


@pytest.mark.parametrize("rank0", [
    _raise(GateFailure("gate(s) failed: acc_f")),
    _raise(DataError("data.root: no such folder")),
    _raise(Terminated()),
    _raise(KeyboardInterrupt()),
    _full_disk,
    _raise(RuntimeError("a bug")),
])
def test_another_rank_exits_as_rank_0_does(rank0, capsys):
    try:
        rank0()
    except BaseException as e:  # noqa: BLE001 - whatever rank 0 ended with
        code, message = verdict_of(e)
    on_rank_0 = _exit_code(rank0)
    on_rank_1 = _exit_code(lambda: raise_verdict(code, message))
    assert on_rank_1 == on_rank_0 == code
    capsys.readouterr()


def test_the_codes_are_the_documented_ones():
    """SIGTERM is 143 and a full disk 4 on rank 0: the verdict says so (it said 130 and 3)."""
    assert verdict_of(Terminated())[0] == 143 and verdict_of(KeyboardInterrupt())[0] == 130
    try:
        _full_disk()
    except RuntimeError as e:
        assert verdict_of(e) == (4, "/releases/.staging/x/model.onnx")
    assert verdict_of(None) == (0, "")
