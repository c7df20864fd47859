import numpy as np
import pytest
import torch
from torch import nn

from nhle_pipeline.export.errors import ExportError
from nhle_pipeline.export.onnx_export import export_onnx, model_bytes
from nhle_pipeline.export.onnx_file import check_onnx, head_rows, load_onnx, node_types
from nhle_pipeline.verify.metrics import parity_max_abs
from nhle_pipeline.verify.ort import open_session, ort_logits


def test_single_self_contained_file_that_passes_the_full_checker(exported):
    _, d = exported
    assert not list(d.glob("*.data")), "weights must be embedded, no sidecar"
    check_onnx(d / "masked.onnx")
    model = load_onnx(d / "masked.onnx")
    assert model.opset_import[0].version == 18
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]


def test_dynamic_batch_and_parity_with_pytorch(exported):
    m, d = exported
    sess, provider = open_session(d / "masked.onnx", "cpu")
    assert provider == "CPUExecutionProvider"
    for n in (1, 7, 300):
        x = np.random.default_rng(n).random((n, 1, 8, 8), dtype=np.float32)
        got = ort_logits(sess, x, batch_size=128)
        want = m(torch.from_numpy(x)).detach().numpy()
        assert got.shape == (n, 10)
        assert parity_max_abs(got, want) < 1e-5


def test_cwm_keeps_nodes_and_shows_masked_rows_in_gemm(exported):
    _, d = exported
    orig, masked = load_onnx(d / "orig.onnx"), load_onnx(d / "masked.onnx")
    assert node_types(orig) == node_types(masked)
    assert node_types(masked).count("Gemm") == 2 and "Mul" not in node_types(masked)
    w, b = head_rows(masked, "classifier")
    assert np.all(w[[0, 4]] == 0) and np.all(b[[0, 4]] == 0)
    w0, _ = head_rows(orig, "classifier")
    assert np.all(w0[[0, 4]] != 0)
    np.testing.assert_array_equal(w[[1, 2, 3]], w0[[1, 2, 3]])


def test_model_bytes_counts_every_parameter_and_buffer():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    # Linear 3*4 + 4, BatchNorm weight/bias/mean/var 4 each (float32), num_batches_tracked 1 int64
    assert model_bytes(m) == (12 + 4 + 4 * 4) * 4 + 8


class _Untraceable(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
            return x.flatten(1)
        return -x.flatten(1)


def test_exporter_failure_is_an_export_error_with_the_model_name(tmp_path):
    with pytest.raises(ExportError, match="export: torch.onnx failed for _Untraceable"):
        export_onnx(_Untraceable(), (1, 2, 2), tmp_path / "u.onnx", opset=18)


def test_a_second_export_reuses_the_decomposition_table_and_writes_the_same_file(tmp_path):
    """export/onnx_export.py builds torch.onnx's table of decompositions once per process and opset
    (it is only read); the files are byte for byte what a freshly built table gives."""
    import contextlib

    from nhle_pipeline.export import onnx_export
    from nhle_pipeline.pipeline.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", num_classes=3, input_shape=(1, 4, 4), kwargs={"hidden": [8]})
    onnx_export.export_onnx(model, (1, 4, 4), tmp_path / "a.onnx", opset=18)
    tables = dict(onnx_export._REGISTRIES)
    onnx_export.export_onnx(model, (1, 4, 4), tmp_path / "b.onnx", opset=18)
    assert tables and onnx_export._REGISTRIES == tables  # the same table objects: nothing rebuilt
    from torch.onnx._internal.exporter import _registration

    assert isinstance(_registration.ONNXRegistry.__dict__["from_torchlib"], classmethod)  # restored after
    saved = onnx_export._registry_reused
    onnx_export._registry_reused = contextlib.nullcontext  # torch's own way: a table per export
    try:
        onnx_export.export_onnx(model, (1, 4, 4), tmp_path / "c.onnx", opset=18)
    finally:
        onnx_export._registry_reused = saved
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes() == (tmp_path / "c.onnx").read_bytes()
