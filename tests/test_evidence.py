import numpy as np
import pytest
import torch

from nhle_pipeline.export.onnx_export import export_onnx
from nhle_pipeline.pipeline.models import build_model
from nhle_pipeline.verify.evidence import mia_efficacy, probe_auc, separability, true_label_prob
from nhle_pipeline.verify.features import ort_logits_and_features, with_feature_output
from nhle_pipeline.verify.ort import open_session


def test_separability_matches_hand_computed_values():
    # forgotten class 0 at (0,0) +/- 1 on x; retained classes 1 and 2 centred at (3,4) and (6,8)
    f = np.array([[-1, 0], [1, 0], [3, 4], [3, 4], [6, 8], [6, 8]], dtype=np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    d_inter, d_intra, ratio = separability(f, y, [0])
    assert d_intra == pytest.approx(1.0)
    assert d_inter == pytest.approx((5.0 + 10.0) / 2)
    assert ratio == pytest.approx(7.5)
    # two forgotten classes: pairs (0,2) and (1,2), samples pooled for D_intra
    d_inter2, d_intra2, _ = separability(f, y, [0, 1])
    assert d_inter2 == pytest.approx((10.0 + 5.0) / 2)
    assert d_intra2 == pytest.approx(0.5)  # (1 + 1 + 0 + 0) / 4


def test_probe_auc_separable_vs_random():
    rng = np.random.default_rng(0)
    y_tr, y_te = rng.integers(0, 4, 400), rng.integers(0, 4, 200)
    shift = lambda y: (y == 0)[:, None] * 3.0  # noqa: E731
    x_tr, x_te = rng.normal(size=(400, 5)) + shift(y_tr), rng.normal(size=(200, 5)) + shift(y_te)
    assert probe_auc(x_tr, y_tr, x_te, y_te, [0], seed=0) > 0.99
    noise_auc = probe_auc(rng.normal(size=(400, 5)), y_tr, rng.normal(size=(200, 5)), y_te, [0], seed=0)
    assert 0.3 < noise_auc < 0.7


def test_true_label_prob_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0], [0.0, -1e4]], np.float32)
    np.testing.assert_allclose(true_label_prob(logits, np.array([0, 0])), [1.0, 1.0])


def test_mia_efficacy_tells_seen_from_unseen():
    rng = np.random.default_rng(0)
    n = 600
    y_tr, y_te = rng.integers(0, 3, n), rng.integers(0, 3, n)

    def logits(y, conf):  # true-label logit = conf, others 0
        z = np.zeros((len(y), 3), np.float32)
        z[np.arange(len(y)), y] = conf
        return z

    # members (train) are confident, non-members (test) are not
    tr = logits(y_tr, rng.uniform(6, 8, n))
    te = logits(y_te, rng.uniform(0, 1, n))
    seen = mia_efficacy(tr, y_tr, te, y_te, [0], seed=0)
    tr_forgot = tr.copy()
    tr_forgot[y_tr == 0] = logits(y_tr[y_tr == 0], rng.uniform(0, 1, (y_tr == 0).sum()))
    unseen = mia_efficacy(tr_forgot, y_tr, te, y_te, [0], seed=0)
    assert seen < 0.05 and unseen > 0.95


def test_feature_output_copy_matches_pytorch_penultimate_features(tmp_path):
    torch.manual_seed(0)
    m = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), kwargs={"hidden": [16, 12]})
    export_onnx(m, (1, 8, 8), tmp_path / "m.onnx", opset=18)
    before = (tmp_path / "m.onnx").read_bytes()
    path = with_feature_output(tmp_path / "m.onnx", "classifier", tmp_path / "f.onnx")
    sess, _ = open_session(path, "cpu")
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    logits, feats = ort_logits_and_features(sess, x, batch_size=2)
    with torch.no_grad():
        want = m.features(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(feats, want, atol=1e-5)
        np.testing.assert_allclose(logits, m(torch.from_numpy(x)).numpy(), atol=1e-5)
    assert feats.shape == (5, 12)
    assert (tmp_path / "m.onnx").read_bytes() == before  # the measured file is not modified
