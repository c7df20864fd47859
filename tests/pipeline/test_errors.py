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
