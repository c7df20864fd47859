"""The layer-wise audit's layers, found in the exported graph (verify/audit_layers.py), and their
pooled features from the same pass as the head's input (verify/measure.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nhle_pipeline.export.onnx_export import export_onnx
from nhle_pipeline.export.onnx_file import load_onnx
from nhle_pipeline.pipeline.config import DataConfig
from nhle_pipeline.pipeline.data import load_dataset
from nhle_pipeline.pipeline.models import build_model
from nhle_pipeline.verify.audit_layers import auto_layers, candidate_layers, resolve_layers
from nhle_pipeline.verify.errors import AuditLayerError
from nhle_pipeline.verify.features import head_input
from nhle_pipeline.verify.measure import run_model


class Tokens(nn.Module):
    """(N, 1, 8, 8) read as 8 tokens of 8 values: a per-token MLP, the mean token, a head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.mix = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.mix(x.flatten(1, 2)).mean(1))


def _export(model: nn.Module, shape, tmp_path, name: str):
    torch.manual_seed(0)
    path = tmp_path / f"{name}.onnx"
    export_onnx(model.eval(), shape, path, opset=18)
    return path, load_onnx(path)


def _head_features(graph, head: str) -> str:
    return head_input(graph, head)


def test_an_mlp_audits_its_hidden_layers_not_the_image(mlp_onnx):
    graph = load_onnx(mlp_onnx.path)
    feats = _head_features(graph, "classifier")
    layers = auto_layers(graph, feats)
    # 64 -> 16 -> 12 -> head: the 16-unit layer besides the head's 12-unit input; not the flattened image
    assert len(layers) == 1 and layers[0] != feats
    assert resolve_layers(graph, feats, None) == [(layers[0], 2)]
    graph_input = graph.graph.input[0].name
    assert graph_input not in candidate_layers(graph, feats)


def test_a_conv_net_audits_the_stage_before_the_last(tmp_path):
    path, graph = _export(build_model("lenet", num_classes=10, input_shape=(1, 28, 28)), (1, 28, 28), tmp_path, "lenet")
    feats = _head_features(graph, "classifier")
    (layer, rank), = resolve_layers(graph, feats, None)
    assert rank == 4  # a feature map, pooled per image
    pool = next(n for n in graph.graph.node if n.op_type == "MaxPool" and layer in n.input)  # the last downsampling
    assert [n for n in graph.graph.node if n.op_type == "MaxPool"][-1] is pool


def test_tokens_are_pooled_over_the_sequence_and_named_layers_are_checked(tmp_path):
    torch.manual_seed(0)
    model = Tokens().eval()
    path, graph = _export(model, (1, 8, 8), tmp_path, "tokens")
    feats = _head_features(graph, "head")
    layers = resolve_layers(graph, feats, None)
    assert [rank for _, rank in layers] == [3]  # the hidden (N, 8, 16) tokens: not the image's, not the head's input
    data = load_dataset(DataConfig())
    out = run_model(path, "head", data.train, data.test, 10, seed=0, device="cpu", batch_size=64, scratch=tmp_path,
                    layers=[t for t, _ in layers])
    assert out.layers == tuple(t for t, _ in layers)
    n_test, n_train = len(out.test_idx), len(out.train_idx)
    assert [a.shape for a in out.test_layer_features] == [(n_test, 16)]  # one vector per image
    assert [a.shape for a in out.train_layer_features] == [(n_train, 16)]
    # the layer's features are the mean over the tokens of PyTorch's hidden activations
    x = torch.from_numpy(np.concatenate(list(data.test.image_batches(out.test_idx, 256))))
    with torch.no_grad():
        want = model.mix[:2](x.flatten(1, 2)).mean(1).numpy()
    np.testing.assert_allclose(out.test_layer_features[0], want, rtol=1e-4, atol=1e-5)
    with pytest.raises(AuditLayerError, match="is not a layer of the graph; its layers: "):
        resolve_layers(graph, feats, ["no_such_tensor"])
    with pytest.raises(AuditLayerError, match="is the head's input, which is always audited"):
        resolve_layers(graph, feats, [feats])


def test_no_layers_asked_means_the_pass_of_before(mlp_onnx, tmp_path):
    data = load_dataset(DataConfig())
    out = run_model(mlp_onnx.path, "classifier", data.train, data.test, 10, seed=0, device="cpu", batch_size=64,
                    scratch=tmp_path)
    assert out.layers == () and out.test_layer_features == ()
