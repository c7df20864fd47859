"""An ONNX file: the one loader (corrupt or missing files fail here), structural checks,
and a look at its graph (node types, initializers, the head's rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nhle_pipeline.export.errors import OnnxFileError


def load_onnx(path: str | Path, *, weights: bool = True):
    """Load an ONNX model; corrupt or non-ONNX files raise ``OnnxFileError``.

    ``weights=False`` skips external weight files (enough for the graph's
    signature and metadata; a model over 2 GB keeps its weights beside it).
    """
    import onnx

    p = Path(path)
    if not p.is_file():
        raise OnnxFileError(f"{p}: no such ONNX file")
    try:
        model = onnx.load(str(p), load_external_data=weights)
    except Exception as e:  # protobuf DecodeError, missing external data, ...
        raise OnnxFileError(f"{p}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from e
    if not model.graph.node:
        raise OnnxFileError(f"{p}: not an ONNX model (empty graph)")
    return model


def check_onnx(path: str | Path) -> None:
    """``onnx.checker.check_model(full_check=True)`` on the file (runs shape inference too)."""
    import onnx

    load_onnx(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise OnnxFileError(f"{path}: ONNX checker failed ({str(e).splitlines()[0][:200]})") from e


def external_data_locations(model) -> list[str]:
    """The ``location`` of every tensor the model keeps outside the file (models over 2 GB),
    each once, in order; "" for a tensor marked external without one."""
    import onnx

    try:
        from onnx.external_data_helper import _get_all_tensors

        tensors = list(_get_all_tensors(model))  # initializers and tensors inside attributes
    except ImportError:  # pragma: no cover - onnx moved the helper: initializers only
        tensors = list(model.graph.initializer)
    found: list[str] = []
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in t.external_data}.get("location", "")
            if loc not in found:
                found.append(loc)
    return found


def default_opset(model) -> int | None:
    """The version of the default ("ai.onnx") operator set the file imports."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def node_types(model) -> list[str]:
    """Op types of the top-level graph, in order."""
    return [n.op_type for n in model.graph.node]


def initializer(model, name: str) -> np.ndarray | None:
    """The named initializer as an array, or None."""
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def head_rows(model, head_name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The classifier head's weight (C, D) and bias (C,) as stored in the graph."""
    w = initializer(model, f"{head_name}.weight")
    if w is None:
        raise OnnxFileError(f"model.onnx: no initializer '{head_name}.weight' for the head")
    return w, initializer(model, f"{head_name}.bias")
