import numpy as np
import pytest
import torch

from nhle_pipeline.export.metadata import stamp_metadata
from nhle_pipeline.export.onnx_export import export_onnx
from nhle_pipeline.export.onnx_file import check_onnx, head_rows, load_onnx, node_types
from nhle_pipeline.pipeline.cwm import apply_cwm
from nhle_pipeline.pipeline.errors import OnnxFileError
from nhle_pipeline.pipeline.models import build_model
from nhle_pipeline.verify.metrics import parity_max_abs
from nhle_pipeline.verify.ort import open_session, ort_logits, read_metadata


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("export")
    m = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), kwargs={"hidden": [32]})
    export_onnx(m, (1, 8, 8), d / "orig.onnx", opset=18)
    apply_cwm(m.classifier, [0, 4], "zero", 0)
    export_onnx(m, (1, 8, 8), d / "masked.onnx", opset=18)
    return m, d


def test_single_self_contained_file_that_passes_the_full_checker(exported):
    _, d = exported
    assert not list(d.glob("*.data")), "weights must be embedded, no sidecar"
    check_onnx(d / "masked.onnx")
    model = load_onnx(d / "masked.onnx")
    assert model.opset_import[0].version == 18


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


def test_metadata_roundtrip_through_onnxruntime(exported, tmp_path):
    _, d = exported
    p = tmp_path / "m.onnx"
    p.write_bytes((d / "masked.onnx").read_bytes())
    stamp_metadata(p, {"method": "nhle-cwm", "forget_classes": "0,4"})
    meta = read_metadata(p)
    assert meta["method"] == "nhle-cwm" and meta["forget_classes"] == "0,4"
    check_onnx(p)


@pytest.mark.parametrize("content", [b"", b"not onnx at all", b"\x08\x07garbage\xff\xff"])
def test_corrupt_files_are_input_errors(tmp_path, content):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(OnnxFileError, match="bad.onnx"):
        check_onnx(p)
    with pytest.raises(OnnxFileError, match="bad.onnx"):
        read_metadata(p)


def test_truncated_onnx_is_an_input_error(exported, tmp_path):
    _, d = exported
    data = (d / "masked.onnx").read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxFileError):
        check_onnx(p)
