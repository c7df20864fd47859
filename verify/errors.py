"""verify's own errors; the CLI maps them to exit codes."""

from __future__ import annotations


class VerifyError(Exception):
    """Base class for the errors verify/ raises on purpose."""


class ProviderUnavailable(VerifyError):
    """An onnxruntime execution provider was required (``device: cuda``) but cannot run here (bad input)."""


class AuditLayerError(VerifyError):
    """A tensor named for the layer-wise audit is not one the graph has, or cannot be pooled (bad input)."""
