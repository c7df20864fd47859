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
    """The classifier head's weight (C, D) and bias (C,) as stored in the graph.

    The bias is the one the head's Gemm (or Conv) adds: the exporter's optimiser keeps one copy of
    identical initializers, so two heads with equal biases (DeiT-distilled's, trained side by side
    from the same zeros) share the first head's ``….bias``."""
    w = initializer(model, f"{head_name}.weight")
    if w is None:
        raise OnnxFileError(f"model.onnx: no initializer '{head_name}.weight' for the head")
    weight = f"{head_name}.weight"
    for node in model.graph.node:
        if node.op_type in ("Gemm", "Conv") and len(node.input) > 1 and node.input[1] == weight:
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            return w, None if bias is None else initializer(model, bias)
    return w, initializer(model, f"{head_name}.bias")


# The highest default-domain opset each IR version carries, from onnx.helper.VERSION_TABLE
# (onnx 1.13: IR 8, opset 18; 1.14-1.15: IR 9, opsets 19-20; 1.16-1.17: IR 10, opsets 21-22).
# Opset 18 is the exporter's lowest, so IR 8 is the lowest a file of ours can be written with;
# IR 10 is what torch.onnx writes. tests/export/test_ir_version.py reads the installed table.
IR_VERSION_MAX_OPSET = {8: 18, 9: 20, 10: 22}

# Element types each IR version added (onnx.proto, `enum Version`): a file written with a lower
# IR may not hold them.
_TYPES_SINCE_IR = {
    9: ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ"),
    10: ("UINT4", "INT4"),
    11: ("FLOAT4E2M1",),
    12: ("FLOAT8E8M0",),
    13: ("UINT2", "INT2"),
}
# Integer attributes that name an element type (Cast's `to`, EyeLike's and the Random ops'
# `dtype`, QuantizeLinear's `output_dtype`).
_TYPE_ATTRIBUTES = ("to", "dtype", "output_dtype")


def _graphs(model):
    """The main graph, every model-local function and every subgraph in a node attribute."""
    todo = [model.graph, *model.functions]
    while todo:
        g = todo.pop()
        yield g
        for n in g.node:
            for a in n.attribute:
                todo.extend([a.g] if a.HasField("g") else [])
                todo.extend(a.graphs)


def _values(g) -> list:
    """A graph's inputs, outputs and value infos (a function's inputs are bare names)."""
    import onnx

    if isinstance(g, onnx.GraphProto):
        return [*g.input, *g.output, *g.value_info]
    return list(getattr(g, "value_info", ()))


def _element_types(model):
    """(element type, where) for every tensor type the model names."""
    def tensor_types(t, where):
        kind = t.WhichOneof("value")
        if kind in ("tensor_type", "sparse_tensor_type"):
            yield getattr(t, kind).elem_type, where
        elif kind in ("sequence_type", "optional_type"):
            yield from tensor_types(getattr(t, kind).elem_type, where)
        elif kind == "map_type":
            yield t.map_type.key_type, where
            yield from tensor_types(t.map_type.value_type, where)

    for g in _graphs(model):
        for v in _values(g):
            yield from tensor_types(v.type, f"value '{v.name}'")
        for t in getattr(g, "initializer", ()):
            yield t.data_type, f"initializer '{t.name}'"
        for n in g.node:
            for a in n.attribute:
                where = f"{n.op_type} '{n.name or n.output[0]}' attribute '{a.name}'"
                tensors = [a.t] if a.HasField("t") else list(a.tensors)
                tensors += [s.values for s in ([a.sparse_tensor] if a.HasField("sparse_tensor") else a.sparse_tensors)]
                for t in tensors:
                    yield t.data_type, where
                if a.type == a.INT and a.name in _TYPE_ATTRIBUTES:
                    yield a.i, where


def ir_features_above(model, ir_version: int) -> list[str]:
    """What ``model`` holds that IR ``ir_version`` does not define and no rewrite can drop:
    element types added later (INT4 in IR 10, the FLOAT8 types in IR 9), function overloads and
    function attribute defaults (IR 10, 9), multi-device settings (IR 11). Empty: it can be
    written as that IR once ``drop_annotations_above`` has run."""
    import onnx

    newer = {}
    for since, names in _TYPES_SINCE_IR.items():
        for name in names:
            code = getattr(onnx.TensorProto, name, None)
            if code is not None and since > ir_version:
                newer[code] = (name, since)
    found: list[str] = []
    for code, where in _element_types(model):
        if code in newer:
            name, since = newer[code]
            found.append(f"{where} is {name} (IR {since})")
    nodes = [n for g in _graphs(model) for n in g.node]
    if ir_version < 10:
        found += [f"node '{n.name or n.output[0]}' names the overload '{n.overload}' (IR 10)" for n in nodes if n.overload]
        found += [f"function '{f.name}' is the overload '{f.overload}' (IR 10)" for f in model.functions if f.overload]
    if ir_version < 9:
        found += [f"function '{f.name}' sets attribute defaults (IR 9)" for f in model.functions if len(f.attribute_proto)]
    if ir_version < 11:
        if len(getattr(model, "configuration", ())):
            found.append("the model's multi-device configuration (IR 11)")
        found += [f"node '{n.name or n.output[0]}' has device configurations (IR 11)"
                  for n in nodes if len(getattr(n, "device_configurations", ()))]
    return found


def drop_annotations_above(model, ir_version: int) -> int:
    """Remove from ``model`` (in place) the annotations IR ``ir_version`` does not define and no
    runtime reads: below IR 10, the ``metadata_props`` of nodes, graphs, values, tensors and
    functions (the exporter's stack traces, module scopes and rewrite-rule names). The model's own
    ``metadata_props`` (the provenance) is in every IR and stays. Returns how many were removed."""
    if ir_version >= 10:
        return 0
    removed = 0

    def clear(proto) -> None:
        nonlocal removed
        if hasattr(proto, "metadata_props"):
            removed += len(proto.metadata_props)
            del proto.metadata_props[:]

    for g in _graphs(model):
        clear(g)
        for v in _values(g):
            clear(v)
        for t in getattr(g, "initializer", ()):
            clear(t)
        for n in g.node:
            clear(n)
            for a in n.attribute:
                for t in ([a.t] if a.HasField("t") else list(a.tensors)):
                    clear(t)
    return removed
