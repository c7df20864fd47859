"""Penultimate features from the exported ONNX model itself.

A verification copy of the graph gets one extra output: the input of the
classifier head's Gemm (the features the head sees; a 1x1 Conv head's feature
map, globally average-pooled). The released file is
never modified; the copy lives in the run's scratch folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nhle_pipeline.export.errors import OnnxFileError
from nhle_pipeline.export.onnx_file import load_onnx

FEATURES_OUTPUT = "penultimate_features"


LAYER_OUTPUT = "audit_layer_{}"  # the copy's extra output for the i-th audited layer


def with_feature_output(onnx_path: str | Path, head_name: str, out_path: str | Path,
                        layers: list[tuple[str, int]] = (), model=None) -> Path:
    """Write a copy of ``onnx_path`` that also outputs the head's input as ``penultimate_features``
    and each of ``layers`` ((tensor, rank): verify/audit_layers.py) as ``audit_layer_<i>``, pooled
    to one vector per image. ``model``: ``onnx_path`` already loaded (it is edited into the copy)."""
    import onnx
    from onnx import helper

    model = load_onnx(onnx_path) if model is None else model
    feat = head_input(model, head_name, onnx_path)
    if _reads_feature_maps(model, head_name):  # a 1x1 Conv head: its (N, C, H, W) input, pooled to (N, C)
        pooled = f"{feat}_verify_pooled"
        model.graph.node.append(helper.make_node("GlobalAveragePool", [feat], [pooled], name="verify_pool"))
        feat = pooled
    # Cast, not Identity: a float16 derivative's features are float16 (a no-op on float32)
    cast = helper.make_node("Cast", [feat], [FEATURES_OUTPUT], name="verify_features", to=onnx.TensorProto.FLOAT)
    model.graph.node.append(cast)
    model.graph.output.append(helper.make_tensor_value_info(FEATURES_OUTPUT, onnx.TensorProto.FLOAT, None))
    for i, (tensor, rank) in enumerate(layers):
        model.graph.node.extend(_pooled(tensor, rank, LAYER_OUTPUT.format(i), f"verify_layer_{i}"))
        model.graph.output.append(helper.make_tensor_value_info(LAYER_OUTPUT.format(i), onnx.TensorProto.FLOAT, None))
    out = Path(out_path)
    onnx.save(model, str(out))
    return out


def _pooled(tensor: str, rank: int, output: str, prefix: str) -> list:
    """Nodes that turn ``tensor`` into float32 (N, D): global average pooling of (N, C, H, W), the
    mean over the tokens of (N, T, D)."""
    import onnx
    from onnx import helper, numpy_helper

    nodes, x = [], tensor
    if rank == 4:
        nodes += [helper.make_node("GlobalAveragePool", [x], [f"{prefix}_gap"], name=f"{prefix}_gap"),
                  helper.make_node("Flatten", [f"{prefix}_gap"], [f"{prefix}_flat"], name=f"{prefix}_flat", axis=1)]
        x = f"{prefix}_flat"
    elif rank == 3:
        axes = numpy_helper.from_array(np.array([1], np.int64), f"{prefix}_axes")
        nodes += [helper.make_node("Constant", [], [f"{prefix}_axes"], name=f"{prefix}_axes", value=axes),
                  helper.make_node("ReduceMean", [x, f"{prefix}_axes"], [f"{prefix}_mean"], name=f"{prefix}_mean",
                                   keepdims=0)]
        x = f"{prefix}_mean"
    return [*nodes, helper.make_node("Cast", [x], [output], name=f"{prefix}_cast", to=onnx.TensorProto.FLOAT)]


def head_input(model, head_name: str, onnx_path: str | Path = "model.onnx") -> str:
    """The tensor the classifier head reads: the first input of the last Gemm/MatMul that uses
    ``<head>.weight``. Derived graphs too: onnxruntime's static INT8 (QDQ) feeds the Gemm
    ``<head>.weight_DequantizeLinear_Output``, its dynamic INT8 a MatMulInteger
    ``<head>.weight_quantized`` (whose activation input is a DynamicQuantizeLinear of the
    features: the float features are that node's input); float16 keeps the names."""
    weight = f"{head_name}.weight"
    heads = [n for n in model.graph.node
             if (n.op_type in ("Gemm", "MatMul", "Conv") and weight in n.input)
             or (n.op_type in ("Gemm", "MatMul", "MatMulInteger")
                 and any(i in (f"{weight}_DequantizeLinear_Output", f"{weight}_quantized") for i in n.input))]
    if not heads:
        raise OnnxFileError(f"{onnx_path}: no Gemm/MatMul/Conv uses '{weight}'; cannot locate the head's features")
    feat = heads[-1].input[0]
    if heads[-1].op_type == "MatMulInteger":
        producer = [n for n in model.graph.node if feat in n.output and n.op_type == "DynamicQuantizeLinear"]
        if not producer:
            raise OnnxFileError(f"{onnx_path}: the head's MatMulInteger input '{feat}' is not a DynamicQuantizeLinear's")
        feat = producer[0].input[0]
    return feat


def _reads_feature_maps(model, head_name: str) -> bool:
    """Is the head a convolution (its input a feature map, not a vector)?"""
    weight = f"{head_name}.weight"
    return any(n.op_type == "Conv" and weight in n.input for n in model.graph.node)


def ort_logits_and_features(sess, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) -> ((N, classes) logits, (N, D) features) from a feature-output session."""
    name = sess.get_inputs()[0].name
    logits, feats = [], []
    for i in range(0, len(x), batch_size):
        lg, ft = sess.run(None, {name: x[i : i + batch_size]})[:2]
        logits.append(lg)
        feats.append(ft.reshape(len(ft), -1))
    return np.concatenate(logits).astype(np.float32), np.concatenate(feats).astype(np.float32)
