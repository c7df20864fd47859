"""Provenance stamped into ``metadata_props`` and read back the way servers do."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import OnnxFileError

PREFIX = "unlearning."


def stamp_metadata(path: str | Path, props: dict[str, str]) -> None:
    """Add ``props`` (prefixed ``unlearning.``) to the file's metadata, rewriting it in place."""
    import onnx

    from export.checker import load_onnx

    model = load_onnx(path)
    keep = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in sorted(props.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = PREFIX + k, str(v)
    onnx.save(model, str(path))


def read_metadata(path: str | Path) -> dict[str, str]:
    """Provenance as onnxruntime reads it (``get_modelmeta().custom_metadata_map``), prefix stripped."""
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise OnnxFileError(f"{p}: no such ONNX file")
    try:
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OnnxFileError(f"{p}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from e
    meta = sess.get_modelmeta()
    out = {k[len(PREFIX):]: v for k, v in meta.custom_metadata_map.items() if k.startswith(PREFIX)}
    out["producer"] = meta.producer_name
    return out
