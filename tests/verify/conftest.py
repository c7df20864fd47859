"""Exported models shared by verify's tests: a random MLP, and the session's trained digits MLP."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from nhle_pipeline.export.onnx_export import export_onnx
from nhle_pipeline.pipeline.models import build_model


@dataclass(frozen=True)
class Exported:
    model: nn.Module  # eval mode; do not modify
    path: Path


@pytest.fixture(scope="session")
def mlp_onnx(tmp_path_factory) -> Exported:
    """An untrained MLP (64 -> 16 -> 12 -> 10, head ``classifier``) and its ONNX file."""
    torch.manual_seed(0)
    m = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), kwargs={"hidden": [16, 12]}).eval()
    path = tmp_path_factory.mktemp("verify-mlp") / "mlp.onnx"
    export_onnx(m, (1, 8, 8), path, opset=18)
    return Exported(m, path)


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory, digits_weights) -> Exported:
    """The session's trained digits MLP (``digits_weights``), exported."""
    from nhle_pipeline.pipeline.checkpoint import load_weights

    m = build_model("mlp", num_classes=10, input_shape=(1, 8, 8))
    load_weights(m, digits_weights)
    path = tmp_path_factory.mktemp("verify-digits") / "digits.onnx"
    export_onnx(m.eval(), (1, 8, 8), path, opset=18)
    return Exported(m, path)
