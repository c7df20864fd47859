import numpy as np
import pytest
import torch

from nhle_pipeline.export.errors import OnnxFileError
from nhle_pipeline.export.onnx_file import head_rows, load_onnx
from nhle_pipeline.verify.features import (
    FEATURES_OUTPUT,
    ort_logits_and_features,
    with_feature_output,
)
from nhle_pipeline.verify.ort import open_session, ort_logits


@pytest.fixture(scope="module")
def feature_copy(mlp_onnx, tmp_path_factory):
    before = mlp_onnx.path.read_bytes()
    path = with_feature_output(mlp_onnx.path, "classifier", tmp_path_factory.mktemp("features") / "f.onnx")
    assert mlp_onnx.path.read_bytes() == before  # the measured file is not modified
    return path


def test_feature_output_copy_matches_pytorch_penultimate_features(mlp_onnx, feature_copy):
    sess, _ = open_session(feature_copy, "cpu")
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    logits, feats = ort_logits_and_features(sess, x, batch_size=2)
    m = mlp_onnx.model
    with torch.no_grad():
        np.testing.assert_allclose(feats, m.features(torch.from_numpy(x)).numpy(), atol=1e-5)
        np.testing.assert_allclose(logits, m(torch.from_numpy(x)).numpy(), atol=1e-5)
    assert feats.shape == (5, 12)


def test_features_are_the_head_input(mlp_onnx, feature_copy):
    """logits == features @ W.T + b, with W and b read from the exported file's head."""
    w, b = head_rows(load_onnx(mlp_onnx.path), "classifier")
    sess, _ = open_session(feature_copy, "cpu")
    x = np.random.default_rng(1).random((64, 1, 8, 8), dtype=np.float32)
    logits, feats = ort_logits_and_features(sess, x, batch_size=64)
    np.testing.assert_allclose(logits, feats @ w.T + b, atol=1e-5)
    assert np.abs(feats).max() > 0  # not vacuous: ReLU features are not all zero


def test_feature_copy_adds_one_output_and_keeps_the_logits(mlp_onnx, feature_copy):
    model = load_onnx(feature_copy)
    assert [o.name for o in model.graph.output] == ["logits", FEATURES_OUTPUT]
    plain, _ = open_session(mlp_onnx.path, "cpu")
    with_feats, _ = open_session(feature_copy, "cpu")
    x = np.random.default_rng(2).random((9, 1, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(ort_logits_and_features(with_feats, x, 4)[0], ort_logits(plain, x, 4))


def test_batching_does_not_change_logits_or_features(feature_copy):
    sess, _ = open_session(feature_copy, "cpu")
    x = np.random.default_rng(3).random((23, 1, 8, 8), dtype=np.float32)
    big_l, big_f = ort_logits_and_features(sess, x, batch_size=23)
    for bs in (1, 5, 100):
        lg, ft = ort_logits_and_features(sess, x, batch_size=bs)
        np.testing.assert_allclose(lg, big_l, atol=1e-6)
        np.testing.assert_allclose(ft, big_f, atol=1e-6)
        assert lg.dtype == ft.dtype == np.float32


def test_unknown_head_is_an_onnx_file_error(mlp_onnx, tmp_path):
    with pytest.raises(OnnxFileError, match="no Gemm/MatMul/Conv uses 'head.weight'"):
        with_feature_output(mlp_onnx.path, "head", tmp_path / "f.onnx")
    assert not (tmp_path / "f.onnx").exists()
