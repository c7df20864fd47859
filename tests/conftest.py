"""Shared fixtures: a small digits MLP trained once per session, and config writers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Runs cache the original's measurements (and extracted npz members): never in the
    user's ~/.cache during tests; subprocesses inherit the variable."""
    import os

    old = os.environ.get("PIPELINE_CACHE_DIR")
    os.environ["PIPELINE_CACHE_DIR"] = str(tmp_path_factory.mktemp("pipeline-cache"))
    yield
    if old is None:
        os.environ.pop("PIPELINE_CACHE_DIR", None)
    else:
        os.environ["PIPELINE_CACHE_DIR"] = old


def pytest_collection_modifyitems(config, items):
    """gpu tests skip without CUDA; PIPELINE_TEST_SHUFFLE=<seed> runs the suite in a seeded random
    order (no test may depend on another having run first)."""
    import os
    import random

    seed = os.environ.get("PIPELINE_TEST_SHUFFLE")
    if seed:
        random.Random(seed).shuffle(items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def digits_config(weights: Path, release_dir: Path, **overrides) -> dict:
    """A valid digits config dict; ``overrides`` are merged one level deep per section."""
    cfg = {
        "seed": 0,
        "device": "cpu",
        "model": {"arch": "mlp", "weights": str(weights), "num_classes": 10},
        "data": {"dataset": "digits"},
        "forget": {"classes": [0], "samples_per_class": 16},
        "release": {"dir": str(release_dir), "name": "digits-test"},
        "train": {"epochs": 25, "lr": 0.003, "batch_size": 32, "weight_decay": 0.0001},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def digits_weights(tmp_path_factory) -> Path:
    """An MLP trained on digits (about 97 % test accuracy), saved as safetensors."""
    from nhle_pipeline.pipeline.config import parse_config
    from nhle_pipeline.pipeline.train import train_original

    root = tmp_path_factory.mktemp("digits-model")
    weights = root / "mlp.safetensors"
    cfg = parse_config(digits_config(weights, root / "releases"))
    _, acc = train_original(cfg, device="cpu")
    assert acc > 0.95, f"fixture model under-trained: {acc}"
    return weights


@pytest.fixture()
def make_config(tmp_path, digits_weights):
    """Write a digits config into tmp_path and return its path."""

    def make(name: str = "run.yaml", **overrides) -> Path:
        return write_config(tmp_path / name, digits_config(digits_weights, tmp_path / "releases", **overrides))

    return make


@pytest.fixture(scope="session")
def digits_release(digits_weights, tmp_path_factory) -> Path:
    """A digits release (forget 0, the default calibrated CWM): one in-process `pipeline run`.
    Shared: copy it before changing anything in it."""
    from nhle_pipeline.pipeline.config import load_config
    from nhle_pipeline.pipeline.run import run_pipeline

    root = tmp_path_factory.mktemp("digits-release")
    cfg = write_config(root / "run.yaml", digits_config(digits_weights, root / "releases"))
    return run_pipeline(load_config(cfg), cfg).path
