import numpy as np
import pytest
import torch
from torch import nn

from nhle_pipeline.pipeline.config import DataConfig, TrainConfig, parse_config
from nhle_pipeline.pipeline.data import load_dataset
from nhle_pipeline.pipeline.errors import ModelError
from nhle_pipeline.pipeline.train import retained_only, train_classifier, train_original
from tests.conftest import digits_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig())


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


def accuracy(model, split) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(split.x)).argmax(1).numpy() == split.y).mean())


def test_retained_only_drops_the_forgotten_classes(digits):
    train = digits.train
    kept = retained_only(train, [0, 2])
    keep = ~np.isin(train.y, [0, 2])
    np.testing.assert_array_equal(kept.y, train.y[keep])
    np.testing.assert_array_equal(kept.x, train.x[keep])  # the same images, in the same order
    assert len(kept) == int(keep.sum()) and not np.isin(kept.y, [0, 2]).any()
    assert len(retained_only(train, [])) == len(train)


def test_train_classifier_learns_reports_each_epoch_and_ends_in_eval(digits):
    m, seen = net(), []
    train_classifier(m, digits.train, TrainConfig(epochs=3, lr=0.01, batch_size=64), device=CPU, seed=0,
                     on_epoch=lambda e, n, loss: seen.append((e, n, loss)))
    assert [s[:2] for s in seen] == [(1, 3), (2, 3), (3, 3)]
    assert seen[-1][2] < seen[0][2]
    assert not m.training
    assert accuracy(m, digits.test) > 0.9


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_same_seed_same_weights_other_seed_other_weights(digits, optimizer):
    cfg = TrainConfig(epochs=1, lr=0.01, batch_size=64, optimizer=optimizer)
    out = []
    for seed in (7, 7, 8):
        m = net()
        train_classifier(m, digits.train, cfg, device=CPU, seed=seed)
        out.append(m[-1].weight.detach().clone())
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
    assert not torch.equal(out[0], out[2])  # the seed drives the shuffling


def test_a_trailing_one_sample_batch_is_skipped_so_batchnorm_does_not_fail(digits):
    n = len(digits.train)
    batch = (n - 1) // 2  # two full batches, then one sample left over
    assert n % batch == 1
    seen = []
    m = train_classifier(net(), digits.train, TrainConfig(epochs=1, batch_size=batch), device=CPU, seed=0,
                         on_epoch=lambda e, n, loss: seen.append(loss))
    assert len(seen) == 1 and np.isfinite(seen[0]) and not m.training


def cfg(tmp_path, weights):
    return parse_config(digits_config(weights, tmp_path / "releases", train={"epochs": 1}))


def test_train_original_writes_safetensors_and_refuses_to_overwrite(tmp_path):
    w = tmp_path / "m.safetensors"
    path, acc = train_original(cfg(tmp_path, w), device="cpu")
    assert path == w and w.is_file() and 0.5 < acc <= 1.0
    before = w.read_bytes()
    with pytest.raises(ModelError, match="already exists; use --force"):
        train_original(cfg(tmp_path, w), device="cpu")
    assert w.read_bytes() == before


@pytest.mark.parametrize(
    "weights, expect",
    [
        (None, "model.weights: required"),
        ("m.pt", "must end in .safetensors"),
    ],
)
def test_train_original_refuses_bad_targets_before_training(tmp_path, weights, expect):
    doc = digits_config(tmp_path / "x", tmp_path / "releases")
    doc["model"]["weights"] = None if weights is None else str(tmp_path / weights)
    with pytest.raises(ModelError, match=expect):
        train_original(parse_config(doc), device="cpu")


def test_train_original_refuses_a_folder_even_with_force(tmp_path):
    folder = tmp_path / "w.safetensors"
    folder.mkdir()
    with pytest.raises(ModelError, match="is a folder"):
        train_original(cfg(tmp_path, folder), device="cpu", force=True)
