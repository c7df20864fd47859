"""Export a PyTorch classifier to one self-contained ONNX file.

Uses the current torch.onnx exporter (``dynamo=True``) with a dynamic batch
dimension. Weights are embedded in ``model.onnx`` (the exporter would write a
sidecar ``.data`` file by default, and a server given only ``model.onnx`` then
fails); only models over the 2 GB protobuf limit use external data.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from nhle_pipeline.export.errors import ExportError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
PROTOBUF_LIMIT_BYTES = 2 * 1024**3


def model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path, *, opset: int) -> list[str]:
    """Export ``model`` (CPU, eval mode) to ``path``; returns external data files written (usually none)."""
    path = Path(path)
    model = model.to("cpu").eval()
    example = torch.zeros(2, *input_shape)  # (2, C, H, W): batch 2 so the exporter cannot specialise on 1
    external = model_bytes(model) >= PROTOBUF_LIMIT_BYTES
    forward_arg = next(iter(_forward_params(model)), "x")
    quiet = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _quiet_loggers():
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

    if not external:
        _drop_initializer_value_info(path)
    got = default_opset(load_onnx(path, weights=False))
    if got != opset:  # the manifest records the opset asked for: it must be the file's
        raise ExportError(f"export: asked for opset {opset}, the exporter wrote opset {got}")
    return [f"{path.name}.data"] if external else []


def _drop_initializer_value_info(path: Path) -> None:
    """Remove the exporter's value_info entries for initializers (the weights carry their own
    shapes): onnxruntime's quantize_dynamic re-infers shapes and fails on them
    ("Inferred shape and existing shape differ")."""
    import onnx

    model = onnx.load(str(path))
    weights = {t.name for t in model.graph.initializer}
    keep = [v for v in model.graph.value_info if v.name not in weights]
    if len(keep) == len(model.graph.value_info):
        return
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    onnx.save(model, str(path))


def _forward_params(model: nn.Module) -> list[str]:
    import inspect

    return [
        p.name
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


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
