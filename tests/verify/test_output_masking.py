"""The output-level masking proof (verify/output_masking.py), the canonical-graph check
(verify/canonical.py) and the batch-size check (verify/batch_independence.py), on exports of
small models with the head shapes users bring and on the red-team's forged graphs."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from nhle_pipeline.export.onnx_export import export_onnx
from nhle_pipeline.pipeline.cwm import apply_cwm
from nhle_pipeline.pipeline.models import build_model
from nhle_pipeline.verify.batch_independence import batch_disagreement
from nhle_pipeline.verify.canonical import graph_problems, structure_difference
from nhle_pipeline.verify.ort import open_session, ort_logits
from nhle_pipeline.verify.output_masking import constant_outputs, forgotten_logits_constant
from tests import forgeries


class TwoHeads(nn.Module):
    """DeiT-distilled's shape: two 10-output heads on one body, averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.head = nn.Linear(16, 10)
        self.head_dist = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return (self.head(h) + self.head_dist(h)) / 2


class ConvHead(nn.Module):
    """SqueezeNet's shape: a 1x1 Conv head, ReLU, global pooling, flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(8, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def _export(model: nn.Module, path, shape=(1, 8, 8)):
    export_onnx(model.eval(), shape, path, opset=18)
    return path


def _images(n: int = 20, shape=(1, 8, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def _spread(path, cls: int) -> float:
    sess, _ = open_session(path, "cpu")
    col = ort_logits(sess, _images(), 7)[:, cls]
    return float(col.max() - col.min())


@pytest.fixture(scope="module")
def digits_pair(tmp_path_factory):
    """An MLP exported as trained-at-random (the 'original') and with class 0 masked (the 'release')."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("masking")
    m = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), kwargs={"hidden": [16]})
    original = _export(m, d / "original.onnx")
    masked = copy.deepcopy(m)
    apply_cwm(masked.classifier, [0], "suppress", -20.0)
    return original, _export(masked, d / "masked.onnx"), d


def test_masked_rows_of_the_one_head_make_the_logit_a_constant(digits_pair):
    original, masked, _ = digits_pair
    assert constant_outputs(onnx.load(str(masked))).tolist() == [True] + [False] * 9
    assert not constant_outputs(onnx.load(str(original))).any()
    assert forgotten_logits_constant(masked, [0]) and not forgotten_logits_constant(masked, [0, 4])
    assert _spread(masked, 0) == 0.0 and _spread(original, 0) > 0  # what the proof says, numerically


def test_two_heads_one_masked_is_not_masked_at_the_output(tmp_path):
    """The DeiT-distilled case: rows of one head zero, the output still varies with the input."""
    torch.manual_seed(0)
    m = TwoHeads()
    apply_cwm(m.head_dist, [0], "suppress", -20.0)
    one = _export(m, tmp_path / "one.onnx")
    assert not forgotten_logits_constant(one, [0]) and _spread(one, 0) > 0
    apply_cwm(m.head, [0], "suppress", -20.0)
    both = _export(m, tmp_path / "both.onnx")
    assert forgotten_logits_constant(both, [0]) and _spread(both, 0) == 0.0


def test_a_conv_head_masked_by_its_kernel_rows(tmp_path):
    torch.manual_seed(0)
    m = ConvHead()
    with torch.no_grad():
        m.classifier[1].weight[3] = 0.0
        m.classifier[1].bias[3] = -5.0
    path = _export(m, tmp_path / "conv.onnx")
    assert constant_outputs(onnx.load(str(path))).tolist() == [i == 3 for i in range(10)]
    assert _spread(path, 3) == 0.0


def test_a_convolutional_body_and_pooling_keep_the_proof(tmp_path):
    """LeNet: convolutions, pools and a reshape before the masked Linear head."""
    torch.manual_seed(0)
    m = build_model("lenet", num_classes=10, input_shape=(1, 28, 28))
    from nhle_pipeline.pipeline.models import find_head

    _, head = find_head(m, 10)
    apply_cwm(head, [2, 7], "zero", 0.0)
    path = _export(m, tmp_path / "lenet.onnx", (1, 28, 28))
    assert constant_outputs(onnx.load(str(path))).tolist() == [i in (2, 7) for i in range(10)]


def test_the_exporters_graphs_are_canonical_and_alike_whatever_the_weights(digits_pair):
    original, masked, _ = digits_pair
    assert graph_problems(onnx.load(str(original))) == [] == graph_problems(onnx.load(str(masked)))
    assert structure_difference(onnx.load(str(masked)), onnx.load(str(original))) is None


@pytest.mark.parametrize(("forge", "problem"), [
    (lambda o, s, d: forgeries.shadowed_head(s, o, d), "initializers defined twice"),
    (lambda o, s, d: forgeries.local_function_head(s, d), "model-local functions"),
    (lambda o, s, d: forgeries.dead_branch(s, d), "do not contribute to the outputs"),
    (lambda o, s, d: forgeries.unused_initializer(s, d), "initializers no node reads"),
])
def test_forged_graphs_have_problems_an_export_never_has(digits_pair, forge, problem):
    original, masked, d = digits_pair
    forged = forge(original, masked, d / "forged.onnx")
    found = graph_problems(onnx.load(str(forged)))
    assert any(problem in p for p in found), found


def test_a_shadowed_head_proves_nothing(digits_pair):
    """Which copy of a twice-defined initializer runs is the runtime's choice (the red team's
    onnxruntime served the second, the original's rows): the proof takes neither."""
    original, masked, d = digits_pair
    forged = forgeries.shadowed_head(masked, original, d / "shadowed.onnx")
    assert forgotten_logits_constant(masked, [0]) and not forgotten_logits_constant(forged, [0])


def test_the_batch_one_switch_is_canonical_in_form_but_not_in_structure(digits_pair):
    """Extra nodes keyed on the batch size: clean by the intrinsic checks (every node feeds the
    output, standard ops), caught by the fresh-export comparison, by the proof (Shape depends
    on the input) and by the batch-size check."""
    original, masked, d = digits_pair
    forged = forgeries.batch_one_switch(masked, original, d / "switch.onnx")
    assert graph_problems(onnx.load(str(forged))) == []
    assert "nodes where a fresh export has" in structure_difference(onnx.load(str(forged)), onnx.load(str(original)))
    assert not forgotten_logits_constant(forged, [0])
    x = _images(16)
    sess, _ = open_session(forged, "cpu")
    measured = ort_logits(sess, x, 16)  # verify's view: a batch of many
    assert _spread_of(measured, 0) == 0.0  # masked in big batches...
    assert batch_disagreement(forged, x, measured) > 1.0  # ...not at batch 1
    sess_m, _ = open_session(masked, "cpu")
    assert batch_disagreement(masked, x, ort_logits(sess_m, x, 16)) <= 1e-5  # the real release agrees


def _spread_of(logits: np.ndarray, cls: int) -> float:
    return float(logits[:, cls].max() - logits[:, cls].min())


def test_an_overflow_switch_after_the_masked_head_is_not_a_constant(tmp_path):
    """0 * x is 0 only while x is finite: a graph that tests the masked head's product for NaN
    (IsNaN -> Where) turns a crafted overflow into an input-dependent logit; the proof refuses it."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((2, 4), np.float32)
    w[1] = 1.0
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["big"]), helper.make_node("Exp", ["big"], ["e"]),
         helper.make_node("Gemm", ["e", "w", "b"], ["z"], transB=1),
         helper.make_node("IsNaN", ["z"], ["nan"]), helper.make_node("Where", ["nan", "hi", "z"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.array(100.0, np.float32), "k"), numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.array([-5.0, 0.0], np.float32), "b"),
         numpy_helper.from_array(np.array([100.0, 0.0], np.float32), "hi")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    assert not constant_outputs(m)[0]
    g.node.pop()  # without the switch, the masked row's logit is the bias (or NaN on an overflow)
    g.node.pop()
    g.output[0].name = "z"
    assert constant_outputs(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))[0]


def test_a_sparse_constant_is_not_a_graph_an_export_makes(digits_pair):
    from onnx import helper, numpy_helper

    _, masked, d = digits_pair
    m = onnx.load(str(masked))
    values = numpy_helper.from_array(np.array([1.0], np.float32), "v")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0], np.int64), "i"), [4])
    m.graph.node.insert(0, helper.make_node("Constant", [], ["sp"], sparse_value=sparse))
    assert any("sparse Constant nodes ['sp']" in p for p in graph_problems(m))
