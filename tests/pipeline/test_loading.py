import numpy as np
import pytest
import torch

from nhle_pipeline.pipeline.checkpoint import sha256_file
from nhle_pipeline.pipeline.config import parse_config
from nhle_pipeline.pipeline.errors import DataError, ModelError
from nhle_pipeline.pipeline.inference import torch_logits
from nhle_pipeline.pipeline.loading import Loaded, build_configured_model, load_data, load_inputs
from tests.conftest import digits_config


def config(tmp_path, weights, **overrides):
    return parse_config(digits_config(weights, tmp_path / "releases", **overrides))


def test_load_inputs_picks_forget_samples_of_the_forgotten_classes(tmp_path, digits_weights):
    cfg = config(tmp_path, digits_weights, forget={"classes": [3, 5], "samples_per_class": 4})
    loaded = load_inputs(cfg)
    assert isinstance(loaded, Loaded)
    y = loaded.data.train.y
    assert y[loaded.forget_idx].tolist() == [3] * 4 + [5] * 4
    # "first": the first four of each class in dataset order
    np.testing.assert_array_equal(loaded.forget_idx[:4], np.flatnonzero(y == 3)[:4])
    np.testing.assert_array_equal(loaded.forget_idx[4:], np.flatnonzero(y == 5)[:4])
    assert loaded.retained_idx.size == 0  # retained mode is opt-in
    assert loaded.device == torch.device("cpu") and loaded.head_name == "classifier"
    assert loaded.weights_sha256 == sha256_file(digits_weights)


def test_loaded_model_carries_the_weights_in_eval_mode(tmp_path, digits_weights):
    loaded = load_inputs(config(tmp_path, digits_weights))
    assert not loaded.model.training
    logits = torch_logits(loaded.model, loaded.data.test.x, 256, loaded.device)
    assert (logits.argmax(1) == loaded.data.test.y).mean() > 0.95  # the trained fixture, not a fresh init


def test_random_selection_and_retained_samples(tmp_path, digits_weights):
    cfg = config(tmp_path, digits_weights, forget={"classes": [1], "samples_per_class": 6, "selection": "random"},
                 unlearn={"nhle": {"retained_per_class": 3}})
    loaded = load_inputs(cfg)
    y = loaded.data.train.y
    assert (y[loaded.forget_idx] == 1).all() and len(set(loaded.forget_idx.tolist())) == 6
    assert np.bincount(y[loaded.retained_idx], minlength=10).tolist() == [3, 0, 3, 3, 3, 3, 3, 3, 3, 3]
    again = load_inputs(cfg)
    np.testing.assert_array_equal(loaded.forget_idx, again.forget_idx)
    np.testing.assert_array_equal(loaded.retained_idx, again.retained_idx)


def test_missing_weights_setting_is_a_model_error(tmp_path):
    cfg = parse_config({"model": {"arch": "mlp", "num_classes": 10}, "forget": {"classes": [0]}, "device": "cpu"})
    with pytest.raises(ModelError, match="model.weights: required"):
        load_inputs(cfg)


def test_missing_weights_file_is_a_model_error(tmp_path):
    cfg = config(tmp_path, tmp_path / "nope.safetensors")
    with pytest.raises(ModelError, match="no such file"):
        load_inputs(cfg)


def test_weights_of_another_architecture_are_a_model_error(tmp_path, digits_weights):
    cfg = config(tmp_path, digits_weights, model={"kwargs": {"hidden": [32]}})
    with pytest.raises(ModelError, match="does not fit model.arch"):
        load_inputs(cfg)


def test_device_override_wins(tmp_path, digits_weights, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = config(tmp_path, digits_weights, device="cuda")
    assert load_inputs(cfg, device_override="cpu").device == torch.device("cpu")


def test_load_data_checks_labels_fit_num_classes(tmp_path, digits_weights):
    with pytest.raises(DataError, match="model.num_classes: 5, but the dataset has labels up to 9"):
        load_data(config(tmp_path, digits_weights, model={"num_classes": 5}, forget={"classes": [0]}))


def test_build_configured_model_is_untrained_and_names_its_head(tmp_path, digits_weights):
    cfg = config(tmp_path, digits_weights, model={"kwargs": {"hidden": [8]}})
    data = load_data(cfg)
    model, head = build_configured_model(cfg, data)
    assert head == "classifier" and model.classifier.in_features == 8
    assert model(torch.zeros(2, *data.input_shape)).shape == (2, 10)
