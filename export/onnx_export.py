"""Export a PyTorch classifier to one self-contained ONNX file.

Uses the current torch.onnx exporter (``dynamo=True``) with a dynamic batch
dimension. Weights are embedded in ``model.onnx`` (the exporter would write a
sidecar ``.data`` file by default, and a server given only ``model.onnx`` then
fails); only models over the 2 GB protobuf limit use external data.

The exporter writes ONNX IR version 10, which onnxruntime loads from 1.18 on.
``ir_version=9`` (or 8) rewrites the file as that IR for older servers: the graph
is the same (of what IR 10 added, an export of ours uses only the metadata on
nodes, the graph and values: stack traces and module scopes no runtime reads,
which are dropped), and the result passes ``onnx.checker`` with ``full_check``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from nhle_pipeline.export.errors import ExportError, OnnxFileError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
PROTOBUF_LIMIT_BYTES = 2 * 1024**3


def model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path, *, opset: int,
                ir_version: int | None = None) -> list[str]:
    """Export ``model`` (CPU, eval mode) to ``path``; returns external data files written (usually none).

    ``ir_version``: the ONNX IR version to write (None: the exporter's own); it must carry
    ``opset`` (``IR_VERSION_MAX_OPSET``, from onnx's VERSION_TABLE)."""
    from nhle_pipeline.export.onnx_file import IR_VERSION_MAX_OPSET

    if ir_version is not None and not opset <= IR_VERSION_MAX_OPSET.get(ir_version, -1):
        raise ValueError(f"ir_version {ir_version} cannot carry opset {opset}; IR versions and their highest "
                         f"opsets: {IR_VERSION_MAX_OPSET}")
    path = Path(path)
    model = model.to("cpu").eval()
    example = torch.zeros(2, *input_shape)  # (2, C, H, W): batch 2 so the exporter cannot specialise on 1
    external = model_bytes(model) >= PROTOBUF_LIMIT_BYTES
    forward_arg = next(iter(_forward_params(model)), "x")
    quiet = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _quiet_loggers(), _registry_reused():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={forward_arg: {0: torch.export.Dim(BATCH_DIM)}},
                external_data=external,
                optimize=True,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; keep the first line
        raise ExportError(f"export: torch.onnx failed for {type(model).__name__}: {str(e).splitlines()[0]}") from e
    from nhle_pipeline.export.onnx_file import default_opset, load_onnx

    _rewrite(path, external=external, ir_version=ir_version)
    got = default_opset(load_onnx(path, weights=False))
    if got != opset:  # the manifest records the opset asked for: it must be the file's
        raise ExportError(f"export: asked for opset {opset}, the exporter wrote opset {got}")
    return [f"{path.name}.data"] if external else []


def _rewrite(path: Path, *, external: bool, ir_version: int | None) -> None:
    """The exporter's file, fixed up in one load and save: initializers' value_info dropped
    (in-file weights only) and the IR version asked for written; a rewritten IR is checked."""
    import onnx

    from nhle_pipeline.export.onnx_file import check_onnx

    model = onnx.load(str(path), load_external_data=False)  # external weights stay where they are
    changed = not external and _drop_initializer_value_info(model)
    relabel = ir_version is not None and model.ir_version != ir_version
    if relabel:
        _set_ir_version(model, ir_version)
    if changed or relabel:
        onnx.save(model, str(path))
    if relabel:
        try:
            check_onnx(path)
        except OnnxFileError as e:
            raise ExportError(f"export: the model written as IR {ir_version} fails the ONNX checker: {e}") from e


def _set_ir_version(model, ir_version: int) -> None:
    """Write ``model`` as IR ``ir_version``: refuse what that IR lacks, drop the annotations it
    does not define (node metadata, below IR 10), set ``model.ir_version``."""
    from nhle_pipeline.export.onnx_file import drop_annotations_above, ir_features_above

    if ir_version < model.ir_version:
        problems = ir_features_above(model, ir_version)
        if problems:
            raise ExportError(f"export: cannot write IR {ir_version} (export.ir_version), the graph needs a "
                              f"later IR: {'; '.join(problems[:3])}"
                              + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))
        drop_annotations_above(model, ir_version)
    model.ir_version = ir_version


def _drop_initializer_value_info(model) -> bool:
    """Remove the exporter's value_info entries for initializers (the weights carry their own
    shapes): onnxruntime's quantize_dynamic re-infers shapes and fails on them
    ("Inferred shape and existing shape differ"). True when it removed any."""
    weights = {t.name for t in model.graph.initializer}
    keep = [v for v in model.graph.value_info if v.name not in weights]
    if len(keep) == len(model.graph.value_info):
        return False
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    return True


def _forward_params(model: nn.Module) -> list[str]:
    import inspect

    return [
        p.name
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


# The exporter builds its table of ONNX decompositions (every torchlib op, ~1.5 s on 2 cores) at
# every export; a run makes two or more (the original, the unlearned model; verify a fresh one).
# Within this process the table for an opset is built once: the exporter only reads it (it adds
# ops only for a custom_translation_table, which this module never passes). Private API, so
# guarded: where torch lays it out otherwise, every export builds its own, as before.
_REGISTRIES: dict[tuple[type, int], object] = {}


@contextlib.contextmanager
def _registry_reused():
    try:
        from torch.onnx._internal.exporter import _registration

        cls = _registration.ONNXRegistry
        build = cls.__dict__["from_torchlib"]
    except (ImportError, AttributeError, KeyError):
        yield
        return
    if not isinstance(build, classmethod):
        yield
        return

    def reused(klass, opset_version=None, **kwargs):
        if kwargs:  # a signature this code does not know: build as torch would
            return build.__func__(klass, *(() if opset_version is None else (opset_version,)), **kwargs)
        key = (klass, opset_version)
        if key not in _REGISTRIES:
            _REGISTRIES[key] = (build.__func__(klass) if opset_version is None
                                else build.__func__(klass, opset_version=opset_version))
        return _REGISTRIES[key]

    cls.from_torchlib = classmethod(reused)
    try:
        yield
    finally:
        cls.from_torchlib = build


@contextlib.contextmanager
def _quiet_loggers():
    names = ["torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx.experimental.symbolic_shapes"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)
