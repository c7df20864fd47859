"""export's own errors; the CLI maps them to exit codes (bad ONNX file: 2, exporter crash: 3)."""

from __future__ import annotations


class OnnxError(Exception):
    """Base class for the errors export/ raises on purpose."""


class OnnxFileError(OnnxError):
    """A file given as an ONNX model is missing, corrupt or not ONNX (bad input)."""


class ExportError(OnnxError):
    """The exporter failed on a model that loaded fine (a crash, not bad input)."""
