"""Structural checks on exported graphs: same nodes, masked head rows."""

from __future__ import annotations

import torch
from torch import nn

from nhle_pipeline.export.onnx_export import export_onnx
from nhle_pipeline.pipeline.cwm import apply_cwm
from nhle_pipeline.verify.graph import rows_masked, same_nodes


def _net(bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4, bias=bias))


def test_cwm_rows_are_found_in_the_graph_and_nodes_are_unchanged(tmp_path):
    model = _net()
    export_onnx(model, (1, 8, 8), tmp_path / "a.onnx", opset=18)
    assert not rows_masked(tmp_path / "a.onnx", "3", [1], -1e4)
    apply_cwm(model[3], [1], "suppress", -1e4)
    export_onnx(model, (1, 8, 8), tmp_path / "b.onnx", opset=18)
    assert rows_masked(tmp_path / "b.onnx", "3", [1], -1e4)
    assert not rows_masked(tmp_path / "b.onnx", "3", [1], 0.0)  # the bias says suppress, not zero
    assert not rows_masked(tmp_path / "b.onnx", "3", [1, 2], -1e4)
    assert same_nodes(tmp_path / "a.onnx", tmp_path / "b.onnx")


def test_a_different_graph_is_not_the_same_nodes(tmp_path):
    export_onnx(_net(), (1, 8, 8), tmp_path / "a.onnx", opset=18)
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    export_onnx(other, (1, 8, 8), tmp_path / "c.onnx", opset=18)
    assert not same_nodes(tmp_path / "a.onnx", tmp_path / "c.onnx")


def test_a_bias_free_head_is_masked_only_by_zero(tmp_path):
    model = _net(bias=False)
    apply_cwm(model[3], [0], "zero", 0.0)
    export_onnx(model, (1, 8, 8), tmp_path / "z.onnx", opset=18)
    assert rows_masked(tmp_path / "z.onnx", "3", [0], 0.0)
    assert not rows_masked(tmp_path / "z.onnx", "3", [0], -1e4)
