"""Structural evidence read from the exported graphs: CWM adds no op, and the masked rows
are visible in the head's initializers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nhle_pipeline.export.onnx_file import head_rows, load_onnx, node_types


def op_types(path: str | Path) -> list[str]:
    """The file's top-level op types, in order (what ``graph_unchanged`` compares)."""
    return node_types(load_onnx(path, weights=False))


def same_nodes(a: str | Path, b: str | Path) -> bool:
    """Do two ONNX files have the same top-level op types in the same order?"""
    return op_types(a) == op_types(b)


def rows_masked(onnx_path: str | Path, head_name: str, classes: list[int], bias: float | None) -> bool:
    """Are ``classes``' rows of the head's weight zero, and their bias entries ``bias``?

    ``bias`` None: the head must have no bias (only the ``zero`` mode masks a bias-free head).
    """
    w, b = head_rows(load_onnx(onnx_path), head_name)
    rows_zero = bool(np.all(w[classes] == 0))
    if b is None:
        return rows_zero and bias == 0.0
    return rows_zero and bias is not None and bool(np.all(b[classes] == np.float32(bias)))


def initializer_arrays(model) -> dict[str, np.ndarray]:
    """Every initializer of ``model`` as an array, by name (names defined once: canonical graphs)."""
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

