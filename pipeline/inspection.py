"""``pipeline inspect MODEL.onnx``: what a server will see in the file, as typed values.

The graph's inputs and outputs (names, element types, shapes with the dynamic
dims named), the opsets, op counts, size, the provenance onnxruntime reads from
``metadata_props`` (numbers as numbers, class lists as lists), and, when the
file sits in a release folder, whether that release is signed (and, with a
public key, whether the signature verifies).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from nhle_pipeline.export.onnx_file import default_opset, external_data_locations, load_onnx
from nhle_pipeline.pipeline.jsonio import loads as strict_json
from nhle_pipeline.pipeline.release.files import MANIFEST, SIGNATURE
from nhle_pipeline.pipeline.release.signing import verify_signature

# onnx element type name -> numpy-style dtype name (what onnxruntime users write)
_DTYPES = {
    "FLOAT": "float32", "FLOAT16": "float16", "BFLOAT16": "bfloat16", "DOUBLE": "float64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "BOOL": "bool", "STRING": "string",
}
# provenance keys written by export.metadata, by type (everything else stays a string)
_INT_KEYS = ("num_classes",)
_INT_LIST_KEYS = ("forget_classes",)
_JSON_KEYS = ("class_names",)


def _tensor(value) -> dict[str, Any]:
    import onnx

    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return {"name": value.name, "dtype": kind or "unknown", "shape": None}
    tt = value.type.tensor_type
    dtype = onnx.TensorProto.DataType.Name(tt.elem_type)
    shape = None
    if tt.HasField("shape"):  # int: a fixed size; str: a named dynamic dim; None: unnamed dynamic dim
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return {"name": value.name, "dtype": _DTYPES.get(dtype, dtype.lower()), "shape": shape}


def typed_provenance(meta: dict[str, str]) -> dict[str, Any]:
    """``read_metadata``'s strings with the known keys typed; an unparsable value stays a string."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            if k in _INT_KEYS:
                out[k] = int(v)
            elif k in _INT_LIST_KEYS:
                out[k] = [int(c) for c in v.split(",")] if v else []
            elif k in _JSON_KEYS:
                out[k] = strict_json(v)  # a key twice, NaN, a huge number: left a string
            else:
                out[k] = v if v != "" else None
        except ValueError:
            out[k] = v
    return out


def release_of(model: Path) -> Path | None:
    """The release folder holding ``model`` (its model.onnx, or its Triton copy), or None."""
    model = model.resolve()
    for folder in (model.parent, model.parents[3] if len(model.parents) > 3 else None):
        if folder is not None and (folder / MANIFEST).is_file():
            return folder
    return None


def signature_status(model: Path, public_key: Path | None) -> dict[str, Any]:
    """``status``: "not-in-release", "unsigned", "present" (not checked) or "verified"; a key that
    does not verify raises (``TamperedReleaseError``, exit 2), as in ``pipeline verify``."""
    release = release_of(model)
    if release is None:
        return {"status": "not-in-release", "release": None, "key_sha256": None}
    if not (release / SIGNATURE).is_file():
        return {"status": "unsigned", "release": str(release), "key_sha256": None}
    if public_key is None:
        return {"status": "present", "release": str(release), "key_sha256": None}
    return {"status": "verified", "release": str(release), "key_sha256": verify_signature(release, public_key)}


def describe(path: Path, public_key: Path | None = None) -> dict[str, Any]:
    """Everything ``pipeline inspect`` shows, as JSON-ready typed values."""
    from nhle_pipeline.verify.ort import read_metadata

    path = Path(path)
    meta = read_metadata(path)  # onnxruntime loads the file first: what a server will do
    model = load_onnx(path, weights=False)
    producer = meta.pop("producer", "") or model.producer_name
    weights = {t.name for t in model.graph.initializer}
    ops = Counter(n.op_type for n in model.graph.node)
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "external_data": [loc for loc in external_data_locations(model) if loc],
        "ir_version": int(model.ir_version),
        "opset": default_opset(model),
        "opsets": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "producer": {"name": producer or None, "version": model.producer_version or None},
        "inputs": [_tensor(v) for v in model.graph.input if v.name not in weights],
        "outputs": [_tensor(v) for v in model.graph.output],
        "nodes": len(model.graph.node),
        "op_counts": dict(sorted(ops.items())),
        "initializers": len(model.graph.initializer),
        "parameters": int(sum(_numel(t) for t in model.graph.initializer)),
        "provenance": typed_provenance(meta) or None,
        "signature": signature_status(path, public_key),
    }


def _numel(tensor) -> int:
    n = 1
    for d in tensor.dims:
        n *= int(d)
    return n


def _shape(shape) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def human_lines(info: dict[str, Any]) -> list[str]:
    """The plain-text view of ``describe``'s result."""
    kib = info["bytes"] / 1024
    lines = [
        f"file                   {info['file']} ({info['bytes']:,} bytes, {kib:,.1f} KiB)"
        + (f"; external data {', '.join(info['external_data'])}" if info["external_data"] else ""),
        f"opset                  {info['opset']} (ir_version {info['ir_version']}; "
        + ", ".join(f"{d} {v}" for d, v in info["opsets"].items()) + ")",
        f"producer               {info['producer']['name'] or '-'} {info['producer']['version'] or ''}".rstrip(),
    ]
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            lines.append(f"{kind[:-1]:22s} {t['name']}  {t['dtype']}  {_shape(t['shape'])}")
    lines.append(f"nodes                  {info['nodes']}: " + ", ".join(f"{k} {v}" for k, v in info["op_counts"].items()))
    lines.append(f"parameters             {info['parameters']:,} in {info['initializers']} initializers")
    sig = info["signature"]
    text = {"not-in-release": "not in a release folder", "unsigned": f"release {sig['release']}: not signed",
            "present": f"release {sig['release']}: signed, not checked (no --public-key)",
            "verified": f"release {sig['release']}: signature verified (key sha256 {str(sig['key_sha256'])[:16]}…)"}
    lines.append(f"signature              {text[sig['status']]}")
    prov = info["provenance"] or {}
    if not prov.get("method"):
        lines.append("provenance             none (not produced by this pipeline)")
    for k, v in sorted(prov.items()):
        shown = ",".join(map(str, v)) if isinstance(v, list) else ("-" if v is None else v)
        lines.append(f"{k:22s} {shown}")
    return lines
