"""Which error means which exit code: BAD_INPUT is exit 2, the other KNOWN_FAILURES exit 3."""

import pytest

from nhle_pipeline.export.errors import ExportError, OnnxError, OnnxFileError
from nhle_pipeline.pipeline.errors import (
    BAD_INPUT,
    KNOWN_FAILURES,
    ConfigError,
    DataError,
    GateFailure,
    InputError,
    ModelError,
    PipelineError,
    ReleaseError,
    TamperedReleaseError,
)
from nhle_pipeline.verify.errors import ProviderUnavailable, VerifyError


@pytest.mark.parametrize(
    "error",
    [InputError("x"), ConfigError("x"), ModelError("x"), DataError("x"), ReleaseError("x"),
     TamperedReleaseError("x"), OnnxFileError("x"), ProviderUnavailable("x")],
)
def test_bad_input_errors(error):
    assert isinstance(error, BAD_INPUT)
    assert isinstance(error, KNOWN_FAILURES)


@pytest.mark.parametrize(
    "error",
    [ExportError("x"), OnnxError("x"), VerifyError("x"), PipelineError("x"), GateFailure("x", "r")],
)
def test_known_failures_that_are_not_bad_input(error):
    assert not isinstance(error, BAD_INPUT)
    assert isinstance(error, KNOWN_FAILURES)


@pytest.mark.parametrize("error", [ValueError("x"), RuntimeError("x"), KeyError("x")])
def test_anything_else_is_neither(error):
    assert not isinstance(error, BAD_INPUT) and not isinstance(error, KNOWN_FAILURES)


def test_gate_failure_keeps_its_report_folder():
    e = GateFailure("acc_f failed", report_dir="/r")
    assert str(e) == "acc_f failed" and e.report_dir == "/r"
    assert GateFailure("x").report_dir is None


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:  # noqa: BLE001
            raise outer from e
    except BaseException as e:  # noqa: BLE001
        return e


@pytest.mark.parametrize("exc, code", [
    (None, 0),
    (GateFailure("gate(s) failed: acc_f"), 1),
    (ModelError("model.weights: no such file"), 2),
    (OnnxFileError("model.onnx: not ONNX"), 2),
    (ExportError("export: torch.onnx failed"), 3),
    (RuntimeError("a bug"), 3),
    (_chained(DataError("data.root: cannot extract"), OSError(28, "No space left on device")), 4),  # ENOSPC
    (_chained(RuntimeError("the exporter failed"), OSError(122, "Disk quota exceeded")), 4),  # EDQUOT
    (KeyboardInterrupt(), 130),
    (_chained(ImportError("onnxruntime"), KeyboardInterrupt()), 130),  # Ctrl-C re-raised by a library
    (__import__("nhle_pipeline.pipeline.errors", fromlist=["Terminated"]).Terminated(), 143),
])
def test_one_exit_code_table_for_every_command_and_rank(exc, code):
    """pipeline/errors.py exit_code_of: what the CLI exits with and what every torchrun rank is told;
    each code is one docs/reference/exit-codes.md lists."""
    from pathlib import Path

    from nhle_pipeline.pipeline.errors import exit_code_of

    assert exit_code_of(exc) == code
    page = (Path(__file__).resolve().parents[2] / "docs" / "reference" / "exit-codes.md").read_text()
    assert f"\n| {code} | " in page
