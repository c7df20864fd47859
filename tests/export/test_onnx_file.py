import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from nhle_pipeline.export.errors import OnnxFileError
from nhle_pipeline.export.onnx_export import export_onnx
from nhle_pipeline.export.onnx_file import check_onnx, head_rows, initializer, load_onnx, node_types


def test_missing_file_is_an_onnx_file_error(tmp_path):
    with pytest.raises(OnnxFileError, match="nope.onnx: no such ONNX file"):
        load_onnx(tmp_path / "nope.onnx")
    (tmp_path / "folder.onnx").mkdir()
    with pytest.raises(OnnxFileError, match="no such ONNX file"):
        load_onnx(tmp_path / "folder.onnx")


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"", "empty graph"),  # parses as an empty ModelProto
        (b"not onnx at all", "not a readable ONNX model"),
        (b"\x08\x07garbage\xff\xff", "bad.onnx"),
    ],
)
def test_corrupt_files_are_input_errors(tmp_path, content, expect):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(OnnxFileError, match=expect):
        load_onnx(p)
    with pytest.raises(OnnxFileError, match="bad.onnx"):
        check_onnx(p)


def test_truncated_onnx_is_an_input_error(exported, tmp_path):
    _, d = exported
    data = (d / "masked.onnx").read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxFileError):
        check_onnx(p)


def test_valid_protobuf_with_an_empty_graph_is_refused(tmp_path):
    p = tmp_path / "empty.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [])), str(p))
    with pytest.raises(OnnxFileError, match="empty.onnx: not an ONNX model \\(empty graph\\)"):
        load_onnx(p)


def test_checker_failure_is_an_onnx_file_error(tmp_path):
    """Loads fine (it has a node), but the node reads a tensor nothing defines."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["undefined"], ["y"])], "g", [x], [y])
    p = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(p))
    assert node_types(load_onnx(p)) == ["Relu"]
    with pytest.raises(OnnxFileError, match="broken.onnx: ONNX checker failed"):
        check_onnx(p)


def test_weights_false_skips_external_weight_files(exported, tmp_path):
    m, d = exported
    model = load_onnx(d / "masked.onnx")
    p = tmp_path / "ext.onnx"
    onnx.save(model, str(p), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    w, b = head_rows(load_onnx(p), "classifier")  # external data present: read through
    np.testing.assert_array_equal(w, m.classifier.weight.detach().numpy())
    np.testing.assert_array_equal(b, m.classifier.bias.detach().numpy())

    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(OnnxFileError, match="ext.onnx: not a readable ONNX model"):
        load_onnx(p)
    graph_only = load_onnx(p, weights=False)  # the signature is still readable
    assert node_types(graph_only) == node_types(model)
    assert [i.name for i in graph_only.graph.input] == ["input"]


def test_node_types_are_the_graph_ops_in_order(exported):
    _, d = exported
    # MLP hidden [32]: flatten, Linear, ReLU, head Linear
    assert node_types(load_onnx(d / "orig.onnx")) == ["Reshape", "Gemm", "Relu", "Gemm"]


def test_head_rows_and_initializer(exported):
    m, d = exported
    model = load_onnx(d / "orig.onnx")
    w, b = head_rows(model, "classifier")
    assert w.shape == (10, 32) and b.shape == (10,)
    np.testing.assert_array_equal(initializer(model, "features.1.weight"), m.features[1].weight.detach().numpy())
    assert initializer(model, "no.such.tensor") is None
    with pytest.raises(OnnxFileError, match="no initializer 'features.weight' for the head"):
        head_rows(model, "features")


def test_head_without_bias_has_none(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10, bias=False))
    export_onnx(net, (1, 8, 8), tmp_path / "nobias.onnx", opset=18)
    w, b = head_rows(load_onnx(tmp_path / "nobias.onnx"), "1")
    np.testing.assert_array_equal(w, net[1].weight.detach().numpy())
    assert b is None
