"""Forged ONNX graphs of the red-team corpus, built from a real export: each serves something
else than the masked model verify measures, in a way a check of part of the file misses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _head(model) -> onnx.NodeProto:
    """The node that writes the graph's output (the head's Gemm in our exports)."""
    out = model.graph.output[0].name
    return next(n for n in model.graph.node if out in n.output)


def _init(model, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def shadowed_head(shipped: Path, original: Path, dst: Path) -> Path:
    """A second initializer of the head's weight and bias, the original's rows: a reader of the
    first copy sees the masked head, onnxruntime serves the last one."""
    m, o = onnx.load(str(shipped)), onnx.load(str(original))
    head = _head(m)
    for name in head.input[1:]:
        m.graph.initializer.append(numpy_helper.from_array(_init(o, name), name))
    onnx.save(m, str(dst))
    return dst


def local_function_head(shipped: Path, dst: Path, boost: float = 50.0) -> Path:
    """The head's Gemm replaced by a model-local function named ``Gemm`` (custom domain) that
    computes the Gemm and adds ``boost`` to class 0: the top-level op types are unchanged."""
    m = onnx.load(str(shipped))
    head = _head(m)
    idx = list(m.graph.node).index(head)
    n_classes = _init(m, head.input[1]).shape[0]
    bump = np.zeros(n_classes, np.float32)
    bump[0] = boost
    body = [
        helper.make_node("Gemm", ["x", "w", "b"], ["y0"], transB=1),
        helper.make_node("Constant", [], ["bump"], value=numpy_helper.from_array(bump, "bump")),
        helper.make_node("Add", ["y0", "bump"], ["y"]),
    ]
    fn = helper.make_function("forged", "Gemm", ["x", "w", "b"], ["y"], body,
                              [helper.make_opsetid("", 18)])
    m.functions.append(fn)
    call = helper.make_node("Gemm", list(head.input), list(head.output), domain="forged", name=head.name)
    m.graph.node.remove(head)
    m.graph.node.insert(idx, call)
    m.opset_import.append(helper.make_opsetid("forged", 1))
    onnx.save(m, str(dst))
    return dst


def batch_one_switch(shipped: Path, original: Path, dst: Path) -> Path:
    """At batch 1 the original head answers, at any other batch size the masked one: verify's
    batches of hundreds see a masked model, a server sending one image the original."""
    m, o = onnx.load(str(shipped)), onnx.load(str(original))
    head = _head(m)
    out = head.output[0]
    masked = out + "_masked"
    head.output[0] = masked
    w, b = head.input[1], head.input[2]
    m.graph.initializer.extend([numpy_helper.from_array(_init(o, w), "orig_w"),
                                numpy_helper.from_array(_init(o, b), "orig_b"),
                                numpy_helper.from_array(np.array([0], np.int64), "zero_idx"),
                                numpy_helper.from_array(np.array([1], np.int64), "one")])
    inp = m.graph.input[0].name
    m.graph.node.extend([
        helper.make_node("Gemm", [head.input[0], "orig_w", "orig_b"], ["orig_logits"], transB=1),
        helper.make_node("Shape", [inp], ["in_shape"]),
        helper.make_node("Gather", ["in_shape", "zero_idx"], ["batch"], axis=0),
        helper.make_node("Equal", ["batch", "one"], ["single"]),
        helper.make_node("Where", ["single", "orig_logits", masked], [out]),
    ])
    onnx.save(m, str(dst))
    return dst


def dead_branch(shipped: Path, dst: Path) -> Path:
    """An extra node whose output nothing reads (room for anything a reader of ops would miss)."""
    m = onnx.load(str(shipped))
    m.graph.node.append(helper.make_node("Identity", [m.graph.input[0].name], ["unused"]))
    onnx.save(m, str(dst))
    return dst


def unused_initializer(shipped: Path, dst: Path) -> Path:
    m = onnx.load(str(shipped))
    m.graph.initializer.append(helper.make_tensor("spare", TensorProto.FLOAT, [1], [0.0]))
    onnx.save(m, str(dst))
    return dst


def identity_before_head(shipped: Path, dst: Path) -> Path:
    """An Identity between the features and the head: the same model, another graph (what an
    exporter of another version may write, or a forger)."""
    m = onnx.load(str(shipped))
    head = _head(m)
    feats = head.input[0]
    m.graph.node.insert(list(m.graph.node).index(head),
                        helper.make_node("Identity", [feats], [f"{feats}_again"], name="extra_identity"))
    head.input[0] = f"{feats}_again"
    onnx.save(m, str(dst))
    return dst
