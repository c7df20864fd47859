"""The project's one error hierarchy.

The CLI maps these to exit codes (DESIGN.md): ``InputError`` and its children
mean bad input (exit 2, nothing written); ``GateFailure`` means the artifact
was built but a verification gate failed (exit 1, report kept). Messages are
one line and name the field or file, then what was expected.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class for every error this project raises on purpose."""


class InputError(PipelineError):
    """Bad user input: config, model file, data or arguments. Exit code 2."""


class ConfigError(InputError):
    """The config file is missing, unparsable or fails validation."""


class ModelError(InputError):
    """The model cannot be built or its weights do not fit the architecture."""


class DataError(InputError):
    """The dataset is missing, malformed, or lacks the requested samples."""


class OnnxFileError(InputError):
    """A file given as an ONNX model is missing, corrupt or not ONNX."""


class ReleaseError(InputError):
    """The release target is unusable (exists without --force, bad name, not writable)."""


class TamperedReleaseError(InputError):
    """A release's files do not match the checksums in its manifest."""


class GateFailure(PipelineError):
    """A verification gate failed; the report is kept, nothing is released."""

    def __init__(self, message: str, report_dir: str | None = None) -> None:
        super().__init__(message)
        self.report_dir = report_dir


class ExportError(PipelineError):
    """The exporter failed on a model that loaded fine (a crash, not bad input)."""
