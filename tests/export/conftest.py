"""An MLP exported twice (as built, then with classes 0 and 4 masked), shared by export's tests."""

from __future__ import annotations

import pytest
import torch

from nhle_pipeline.export.onnx_export import export_onnx
from nhle_pipeline.pipeline.cwm import apply_cwm
from nhle_pipeline.pipeline.models import build_model


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """(the masked MLP, folder holding orig.onnx and masked.onnx); do not modify either."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("export")
    m = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), kwargs={"hidden": [32]})
    export_onnx(m, (1, 8, 8), d / "orig.onnx", opset=18)
    apply_cwm(m.classifier, [0, 4], "zero", 0)
    export_onnx(m, (1, 8, 8), d / "masked.onnx", opset=18)
    return m, d
