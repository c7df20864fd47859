import numpy as np
import pytest
import torch

import nhle_pipeline.pipeline.reference as reference
from nhle_pipeline.export.onnx_file import check_onnx
from nhle_pipeline.pipeline.config import parse_config
from nhle_pipeline.pipeline.loading import load_data
from nhle_pipeline.verify.ort import open_session, ort_logits
from tests.conftest import digits_config

FORGET = [0, 1]


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """A 3-epoch retrain without classes 0 and 1; records what training saw."""
    root = tmp_path_factory.mktemp("reference")
    cfg = parse_config(digits_config(
        root / "unused.safetensors", root / "releases",
        model={"kwargs": {"hidden": [32]}}, forget={"classes": FORGET},
        train={"epochs": 3, "lr": 0.01, "batch_size": 64},
    ))
    data = load_data(cfg)
    seen, epochs = [], []
    real = reference.train_classifier

    def spy(model, split, *args, **kwargs):
        seen.append(split.y.copy())
        return real(model, split, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reference, "train_classifier", spy)
        out = reference.retrain_reference(cfg, data, torch.device("cpu"), root / "reference.onnx",
                                          on_epoch=lambda e, n, loss: epochs.append((e, n, loss)))
    return cfg, data, out, seen, epochs


def test_training_data_has_no_forgotten_class(retrained):
    _, data, _, seen, _ = retrained
    assert len(seen) == 1
    labels = seen[0]
    assert not np.isin(labels, FORGET).any()
    # everything else is there: the whole retained training split
    assert len(labels) == int((~np.isin(data.train.y, FORGET)).sum())


def test_exported_reference_is_a_valid_onnx_that_never_predicts_forgotten_classes(retrained):
    cfg, data, out, _, epochs = retrained
    assert out.name == "reference.onnx" and out.is_file()
    check_onnx(out)
    assert [e[:2] for e in epochs] == [(1, 3), (2, 3), (3, 3)]
    assert epochs[-1][2] < epochs[0][2]  # the loss went down
    sess, _ = open_session(out, "cpu")
    pred = ort_logits(sess, data.test.x, 256).argmax(1)
    assert np.isin(pred, FORGET).mean() < 0.01  # classes it never saw are (almost) never predicted
    keep = ~np.isin(data.test.y, FORGET)
    assert (pred[keep] == data.test.y[keep]).mean() > 0.85  # and it did learn the others


def test_same_seed_same_reference(retrained, tmp_path):
    cfg, data, out, _, _ = retrained
    again = reference.retrain_reference(cfg, data, torch.device("cpu"), tmp_path / "again.onnx")
    x = data.test.x[:64]
    a = ort_logits(open_session(out, "cpu")[0], x, 64)
    b = ort_logits(open_session(again, "cpu")[0], x, 64)
    np.testing.assert_allclose(a, b, atol=1e-5)
