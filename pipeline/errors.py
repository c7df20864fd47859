"""The pipeline's error hierarchy, and which errors of the lower packages mean what.

The CLI maps these to exit codes (DESIGN.md): ``BAD_INPUT`` (``InputError``
and its children, export's ``OnnxFileError``, verify's ``ProviderUnavailable``)
means bad input (exit 2, nothing written); ``GateFailure`` means the artifact
was built but a verification gate failed (exit 1, report kept);
``KNOWN_FAILURES`` are failures we can describe (exit 3). Messages are one line
and name the field or file, then what was expected. export/ and verify/ import
nothing of this package, so they raise their own errors.
"""

from __future__ import annotations

from nhle_pipeline.export.errors import ExportError, OnnxError, OnnxFileError
from nhle_pipeline.verify.errors import ProviderUnavailable, VerifyError


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


class ReleaseError(InputError):
    """The release target is unusable (exists without --force, bad name, not writable)."""


class TamperedReleaseError(InputError):
    """A release's files do not match the checksums in its manifest."""


class GateFailure(PipelineError):
    """A verification gate failed; the report is kept, nothing is released. ``manifest``: the
    failed run's manifest (pipeline.release.manifest.Manifest; None where only the verdict is
    known: on a torchrun rank other than 0)."""

    def __init__(self, message: str, report_dir: str | None = None, manifest: object | None = None) -> None:
        super().__init__(message)
        self.report_dir = report_dir
        self.manifest = manifest


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so it unwinds like Ctrl-C (an existing release intact)."""


def disk_full(e: BaseException | None) -> OSError | None:
    """The no-space (or quota) OSError in ``e``'s chain (itself, its cause, its context), if any."""
    import errno

    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


BAD_INPUT = (InputError, OnnxFileError, ProviderUnavailable)
KNOWN_FAILURES = (PipelineError, ExportError, OnnxError, VerifyError)

# The exit codes (docs/reference/exit-codes.md): one table for every command and every torchrun rank.
EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CRASH = 3  # an unexpected failure: never 1, so a CI gate can tell a bug from a failed gate
EXIT_NO_SPACE = 4  # the disk (or quota) filled up while writing: the environment, not the input or a bug
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT
EXIT_TERMINATED = 143  # SIGTERM (docker stop, Kubernetes, a cancelled CI job): 128 + 15


def chained(e: BaseException | None, match) -> BaseException | None:
    """The first exception in ``e``'s chain (itself, its cause, its context) that ``match`` accepts."""
    seen = set()
    while e is not None and id(e) not in seen:
        if match(e):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def exit_code_of(e: BaseException | None) -> int:
    """The exit code a command (every rank of it) ends with after ``e`` (None: success): SIGTERM,
    Ctrl-C, a failed gate; then a full disk anywhere in the chain (met while reading or writing,
    it is the environment's, not the input's), bad input, a failure we can describe, SIGTERM or
    Ctrl-C that a library re-raised as its own error; else a crash."""
    if e is None:
        return EXIT_OK
    if isinstance(e, Terminated):
        return EXIT_TERMINATED
    if isinstance(e, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(e, GateFailure):
        return EXIT_GATE_FAILED
    if disk_full(e) is not None:
        return EXIT_NO_SPACE
    if isinstance(e, BAD_INPUT):
        return EXIT_BAD_INPUT
    if isinstance(e, KNOWN_FAILURES):
        return EXIT_CRASH
    stop = chained(e, lambda x: isinstance(x, KeyboardInterrupt))
    if stop is not None:
        return EXIT_TERMINATED if isinstance(stop, Terminated) else EXIT_INTERRUPTED
    return EXIT_CRASH


__all__ = [
    "BAD_INPUT", "EXIT_BAD_INPUT", "EXIT_CRASH", "EXIT_GATE_FAILED", "EXIT_INTERRUPTED", "EXIT_NO_SPACE", "EXIT_OK",
    "EXIT_TERMINATED", "chained", "exit_code_of", "Terminated", "disk_full", "KNOWN_FAILURES", "ConfigError", "DataError", "ExportError", "GateFailure", "InputError",
    "ModelError", "OnnxFileError", "PipelineError", "ProviderUnavailable", "ReleaseError", "TamperedReleaseError",
]
