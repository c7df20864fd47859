import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import nhle_pipeline.verify.ort as ort_mod
from nhle_pipeline.export.errors import OnnxFileError
from nhle_pipeline.export.metadata import stamp_metadata
from nhle_pipeline.export.onnx_file import check_onnx, load_onnx
from nhle_pipeline.verify.errors import ProviderUnavailable
from nhle_pipeline.verify.ort import CPU, CUDA, open_session, ort_logits, read_metadata

CUDA_USABLE = CUDA in onnxruntime.get_available_providers() and ort_mod.cuda_driver_present()


def test_cpu_session_reports_the_cpu_provider(mlp_onnx):
    sess, provider = open_session(mlp_onnx.path, "cpu")
    assert provider == CPU == "CPUExecutionProvider"
    assert sess.get_providers() == [CPU]
    assert sess.get_inputs()[0].name == "input"


@pytest.mark.skipif(CUDA_USABLE, reason="onnxruntime's CUDA provider works here")
def test_cuda_without_cuda_is_provider_unavailable_and_auto_falls_back(mlp_onnx):
    with pytest.raises(ProviderUnavailable, match="device: 'cuda' requested"):
        open_session(mlp_onnx.path, "cuda")
    assert open_session(mlp_onnx.path, "auto")[1] == CPU


@pytest.mark.parametrize("missing", ["provider", "driver"])
def test_cuda_is_refused_whenever_its_provider_cannot_run(mlp_onnx, monkeypatch, missing):
    """The same on any machine: no CUDA provider in the build, or no driver library to load."""
    if missing == "provider":
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    else:
        monkeypatch.setattr(ort_mod, "cuda_driver_present", lambda: False)
    with pytest.raises(ProviderUnavailable):
        open_session(mlp_onnx.path, "cuda")
    assert open_session(mlp_onnx.path, "auto")[1] == CPU


def test_ort_logits_batches_equal_one_big_batch_and_pytorch(mlp_onnx):
    sess, _ = open_session(mlp_onnx.path, "cpu")
    x = np.random.default_rng(0).random((37, 1, 8, 8), dtype=np.float32)
    whole = ort_logits(sess, x, batch_size=37)
    for bs in (1, 4, 10, 64):
        got = ort_logits(sess, x, batch_size=bs)
        assert got.shape == (37, 10) and got.dtype == np.float32
        np.testing.assert_allclose(got, whole, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(whole, mlp_onnx.model(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_missing_and_unloadable_files_are_onnx_file_errors(tmp_path):
    with pytest.raises(OnnxFileError, match="no such ONNX file"):
        open_session(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(OnnxFileError, match="junk.onnx: onnxruntime cannot load it"):
        open_session(tmp_path / "junk.onnx", "cpu")


@pytest.mark.parametrize("content", [b"", b"not onnx at all", b"\x08\x07garbage\xff\xff"])
def test_read_metadata_of_corrupt_files_is_an_input_error(tmp_path, content):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(OnnxFileError, match="bad.onnx"):
        read_metadata(p)


def test_metadata_roundtrip_through_onnxruntime(mlp_onnx, tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(mlp_onnx.path.read_bytes())
    stamp_metadata(p, {"method": "nhle-cwm", "forget_classes": "0,4"})
    meta = read_metadata(p)
    assert meta["method"] == "nhle-cwm" and meta["forget_classes"] == "0,4"
    check_onnx(p)


def test_read_metadata_strips_the_prefix_skips_foreign_keys_and_adds_the_producer(mlp_onnx, tmp_path):
    p = tmp_path / "m.onnx"
    model = load_onnx(mlp_onnx.path)
    extra = model.metadata_props.add()
    extra.key, extra.value = "author", "someone"
    onnx.save(model, str(p))
    stamp_metadata(p, {"seed": "3"})
    assert read_metadata(p) == {"seed": "3", "producer": model.producer_name}
    assert model.producer_name == "pytorch"
