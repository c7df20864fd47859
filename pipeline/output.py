"""What the CLI writes: streams that survive a closed reader, and the ``--json`` document.

Streams. ``pipeline inspect model.onnx | head -3`` closes the pipe while the
command still writes; Python then raises ``BrokenPipeError`` from whatever
``print`` happened to be running (and again when it flushes at exit).
:func:`protect_streams` wraps ``sys.stdout`` and ``sys.stderr`` so that a
write to a reader that went away (EPIPE) or to a closed descriptor (EBADF)
points that descriptor at ``/dev/null`` and carries on: the command finishes
its work (a ``pipeline run`` still releases) and exits with its own code.

JSON. With ``--json`` a command writes exactly one JSON document on stdout
and all human output on stderr. The document is built by the command
(:func:`current_document`) and written once, by the CLI's error handler,
whatever the outcome: ``exit_code`` is the process's exit code and ``error``
the one-line message (``null`` on success). Values are typed (numbers,
booleans, lists, ``null`` for a missing or NaN number). The schemas live in
``pipeline/schemas/<command>.schema.json``.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import sys
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from nhle_pipeline.pipeline.release.files import MODEL

SCHEMA_VERSION = 1
GONE = (errno.EPIPE, errno.EBADF)  # the reader went away; the descriptor was closed


class SafeStream(io.TextIOBase):
    """A text stream that never raises because its reader is gone (see the module doc)."""

    def __init__(self, stream, fd: int) -> None:
        super().__init__()
        self._stream = stream
        self._fd = fd
        self.gone = stream is None

    # The wrapped stream's attributes (encoding, errors, buffer, isatty, ...) for click and rich.
    def __getattr__(self, name: str):
        if self._stream is None:
            raise AttributeError(name)
        return getattr(self._stream, name)

    @property
    def encoding(self):  # io.TextIOBase defines it as None
        return getattr(self._stream, "encoding", "utf-8") or "utf-8"

    @property
    def errors(self):
        return getattr(self._stream, "errors", "strict")

    def _drop(self) -> None:
        """Point the descriptor at /dev/null: later writes (and the final flush) go nowhere."""
        self.gone = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._fd)
            os.close(devnull)
        except OSError:
            pass

    def write(self, text: str) -> int:
        if self.gone:
            return len(text)
        try:
            return self._stream.write(text)
        except OSError as e:
            if e.errno not in GONE and not isinstance(e, BrokenPipeError):
                raise
            self._drop()
            return len(text)

    def flush(self) -> None:
        if self.gone:
            try:  # what is buffered now goes to /dev/null; keeps the exit-time flush quiet
                self._stream is not None and self._stream.flush()
            except (OSError, ValueError):
                pass
            return
        try:
            self._stream.flush()
        except OSError as e:
            if e.errno not in GONE and not isinstance(e, BrokenPipeError):
                raise
            self._drop()

    def isatty(self) -> bool:
        try:
            return not self.gone and self._stream.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        return self._fd

    def writable(self) -> bool:
        return True


def protect_streams() -> None:
    """Wrap sys.stdout and sys.stderr (idempotent); a missing stream becomes a silent one."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if not isinstance(stream, SafeStream):
            setattr(sys, name, SafeStream(stream, fd))


# --- the --json document -----------------------------------------------------------------------


def plain(value: Any) -> Any:
    """``value`` as strict JSON data: NaN and infinities become null, tuples lists, paths strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return plain(value.item())
    return value


class Document:
    """The one JSON document a ``--json`` command writes; the command fills ``fields``."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.fields: dict[str, Any] = {}
        self.enabled = True  # off on torchrun's non-zero ranks: one document per job
        self.error: str | None = None  # the command's error line (the CLI's ``error:`` line), if it failed

    def update(self, **fields: Any) -> None:
        self.fields.update(fields)

    def render(self, exit_code: int, error: str | None) -> str:
        doc = {"schema_version": SCHEMA_VERSION, "command": self.command, "exit_code": exit_code,
               "ok": exit_code == 0, "error": error, **self.fields}
        return json.dumps(plain(doc), indent=2, allow_nan=False)


_current: Document | None = None


def current_document() -> Document | None:
    """The document of the running ``--json`` command, or None (human output only)."""
    return _current


@contextmanager
def json_mode(command: str, enabled: bool):
    """While a command runs: with ``enabled``, a fresh Document, and rich's console on stderr."""
    global _current
    if not enabled:
        yield None
        return
    from nhle_pipeline.pipeline.console import console

    # rich's Console.file resolves an unset file to the sys.stdout of the moment: keep the
    # setting itself (usually None, "whatever sys.stdout is"), or the console would stay bound
    # to this command's stdout after it (a test runner's capture buffer, a closed pipe)
    saved = console._file
    console.file = sys.stderr
    _current = Document(command)
    try:
        yield _current
    finally:
        console.file = saved
        _current = None


def emit(doc: Document | None, exit_code: int, error: str | None) -> None:
    """Write ``doc`` on stdout (nothing without one)."""
    if doc is not None and doc.enabled:
        sys.stdout.write(doc.render(exit_code, error) + "\n")
        sys.stdout.flush()


def schema(command: str) -> dict:
    """The JSON Schema of ``command``'s ``--json`` document (package data)."""
    text = files("nhle_pipeline.pipeline").joinpath(f"schemas/{command}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


# --- what each command puts in its document ----------------------------------------------------


def _accuracy(rec) -> dict[str, Any] | None:
    if rec is None:
        return None
    return {"acc_f": rec.acc_f, "acc_r": rec.acc_r, "per_class": list(rec.per_class),
            "n_forget": rec.n_forget, "n_retain": rec.n_retain}


def gate_list(gates) -> list[dict[str, Any]]:
    """Gates (records or results) as typed dicts."""
    return [{"name": g.name, "passed": bool(g.passed), "value": g.value, "op": g.op, "threshold": g.threshold,
             "description": g.description} for g in gates]


def run_fields(manifest, release: Path | None, report_dir: str | None) -> dict[str, Any]:
    """``pipeline run --json``: the verdict, where it went, every metric and gate, from the manifest."""
    met = manifest.metrics
    ev = met.evidence.model_dump()
    model = manifest.files.get(MODEL)
    return {
        "name": manifest.name,
        "status": manifest.status,
        "released": release is not None,
        "release": str(release) if release is not None else None,
        "report_dir": report_dir,
        "forget_classes": list(manifest.forget_classes),
        "num_classes": manifest.num_classes,
        "class_names": getattr(manifest, "class_names", None),
        "model_sha256": model.sha256 if model else None,
        "config_sha256": manifest.config_sha256,
        "metrics": {
            "original": _accuracy(met.original), "unlearned": _accuracy(met.unlearned),
            "reference": _accuracy(met.reference),
            "acc_f": met.acc_f, "delta_acc_r": met.delta_acc_r, "parity_max_abs": met.parity_max_abs,
            "graph_unchanged": met.graph_unchanged, "cwm_in_graph": met.cwm_in_graph,
            "output_masked": met.output_masked,
            "evidence": {k: ev.get(k) for k in ("original", "unlearned", "reference")},
            "representation": met.representation.model_dump(mode="json") if met.representation else None,
        },
        "forgetting_level": met.representation.level if met.representation else None,
        "gates": gate_list(manifest.gates),
        "passed": bool(manifest.passed),
        "timings_s": dict(manifest.timings_s),
        "runtime": {"torch_device": manifest.runtime.torch_device,
                    "onnxruntime_provider": manifest.runtime.onnxruntime_provider},
    }


def verify_fields(check, release_dir: Path) -> dict[str, Any]:
    """``pipeline verify --json``: what was checked, under which policy, and every recomputed gate."""
    status = "verified" if check.signature else ("present" if check.signed else "unsigned")
    metrics = check.metrics
    return {
        "release": str(release_dir),
        "passed": bool(check.passed),
        "provider": check.provider,
        "signature": {"status": status, "key_sha256": check.signature},
        "policy": {"source": check.policy_source, **check.policy.model_dump(mode="json")},
        "manifest_gates": dict(check.manifest_gates),
        "original_from": check.original_from,
        "notes": list(check.notes),
        "metrics": {
            "original": metrics.get("original"), "unlearned": metrics.get("unlearned"),
            "acc_f": metrics.get("acc_f"), "delta_acc_r": metrics.get("delta_acc_r"),
            "evidence": metrics.get("evidence"),
            "output_masked": metrics.get("output_masked"),
            "representation": metrics.get("representation"),
        },
        "forgetting_level": (metrics.get("representation") or {}).get("level"),
        "gates": gate_list(check.gates),
    }
