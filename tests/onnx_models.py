"""Small hand-built ONNX files for tests that only need a valid classifier graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_onnx(path: Path, *, shape=("batch", 1, 4, 4), classes: int = 3, metadata: dict | None = None) -> Path:
    """(batch, 1, 4, 4) float32 'input' -> Flatten -> Gemm(+bias) -> Relu -> (batch, 3) 'logits'."""
    features = int(np.prod(shape[1:]))
    w = numpy_helper.from_array(np.ones((classes, features), np.float32), "head.weight")
    b = numpy_helper.from_array(np.zeros(classes, np.float32), "head.bias")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]),
         helper.make_node("Gemm", ["flat", "head.weight", "head.bias"], ["pre"], transB=1),
         helper.make_node("Relu", ["pre"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9,
                              producer_name="tests")
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return Path(path)
