import numpy as np
import pytest

from nhle_pipeline.pipeline.config import DataConfig
from nhle_pipeline.pipeline.data import load_dataset
from nhle_pipeline.verify.evidence import separability
from nhle_pipeline.verify.measure import Measurement, measure_onnx
from nhle_pipeline.verify.metrics import accuracy
from nhle_pipeline.verify.ort import CPU, open_session, ort_logits


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig())


class Arrays:
    """A split as plain arrays, not the pipeline's Split: labels ``y``, images ``x``
    (also served in batches, ``image_batches``), all verify/ may rely on."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def image_batches(self, indices, batch_size):
        idx = np.arange(len(self.y)) if indices is None else np.asarray(indices)
        for i in range(0, len(idx), batch_size):
            yield self.x[idx[i : i + batch_size]]


@pytest.fixture(scope="module")
def measured(digits_onnx, digits, tmp_path_factory):
    train, test = Arrays(digits.train.x, digits.train.y), Arrays(digits.test.x, digits.test.y)
    scratch = tmp_path_factory.mktemp("scratch")
    m = measure_onnx(digits_onnx.path, "classifier", train, test, [0], 10,
                     seed=0, device="cpu", batch_size=128, scratch=scratch)
    return m, scratch


def test_accuracy_is_that_of_the_file_itself(digits_onnx, digits, measured):
    m, _ = measured
    assert isinstance(m, Measurement) and m.provider == CPU
    sess, _ = open_session(digits_onnx.path, "cpu")
    logits = ort_logits(sess, digits.test.x, 450)
    np.testing.assert_allclose(m.test_logits, logits, atol=1e-6)
    assert m.accuracy == accuracy(logits, digits.test.y, [0], 10)
    # the fixture's model is trained: both halves are well above chance
    assert m.accuracy.acc_f > 0.9 and m.accuracy.acc_r > 0.9
    assert (m.accuracy.n_forget, m.accuracy.n_retain) == (int((digits.test.y == 0).sum()), int((digits.test.y != 0).sum()))


def test_evidence_comes_from_the_test_features(digits, measured):
    m, _ = measured
    assert m.test_features.shape == (450, 128)  # the default MLP's last hidden layer
    d_inter, d_intra, ratio = separability(m.test_features, digits.test.y, [0])
    assert (m.evidence.d_inter, m.evidence.d_intra, m.evidence.ratio_d) == (d_inter, d_intra, ratio)
    # before any unlearning, class 0 is plainly separable and a probe finds it
    assert m.evidence.ratio_d > 1.0
    assert m.evidence.probe_auc > 0.95
    assert 0.0 <= m.evidence.mia_efficacy <= 1.0


def test_the_feature_copy_lives_in_scratch(digits_onnx, measured):
    _, scratch = measured
    assert (scratch / f"{digits_onnx.path.stem}.features.onnx").is_file()
    assert list(digits_onnx.path.parent.glob("*.features.onnx")) == []


def test_measurement_depends_on_the_seed_not_the_batch_size(digits_onnx, digits, measured, tmp_path):
    m, _ = measured
    train, test = Arrays(digits.train.x, digits.train.y), Arrays(digits.test.x, digits.test.y)
    again = measure_onnx(digits_onnx.path, "classifier", train, test, [0], 10,
                         seed=0, device="cpu", batch_size=450, scratch=tmp_path)
    assert again.accuracy == m.accuracy
    assert again.evidence.probe_auc == pytest.approx(m.evidence.probe_auc, abs=1e-6)
    assert again.evidence.mia_efficacy == m.evidence.mia_efficacy
