"""Provenance stamped into ``metadata_props`` (read back by ``verify.ort.read_metadata``,
the way servers read it)."""

from __future__ import annotations

from pathlib import Path

from nhle_pipeline.export.onnx_file import load_onnx

PREFIX = "unlearning."


def stamp_metadata(path: str | Path, props: dict[str, str]) -> None:
    """Add ``props`` (prefixed ``unlearning.``) to the file's metadata, rewriting it in place."""
    import onnx

    model = load_onnx(path)
    keep = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in sorted(props.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = PREFIX + k, str(v)
    onnx.save(model, str(path))
