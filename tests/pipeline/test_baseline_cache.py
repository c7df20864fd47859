"""The baseline cache: content-keyed, atomic, and never trusted when damaged."""

from __future__ import annotations

import numpy as np

from nhle_pipeline.pipeline.baseline_cache import (
    BaselineCache,
    CachedBaseline,
    baseline_key,
    data_fingerprint,
)
from nhle_pipeline.pipeline.config import DataConfig
from nhle_pipeline.pipeline.data import load_dataset
from nhle_pipeline.verify.measure import ModelOutputs


def _outputs(seed=0) -> ModelOutputs:
    rng = np.random.default_rng(seed)
    return ModelOutputs(
        correct=np.array([3, 4]), total=np.array([5, 5]), test_idx=np.arange(10),
        test_logits=rng.normal(size=(10, 2)).astype(np.float32), test_features=rng.normal(size=(10, 4)).astype(np.float32),
        train_idx=np.arange(6), train_logits=rng.normal(size=(6, 2)).astype(np.float32),
        train_features=rng.normal(size=(6, 4)).astype(np.float32), provider="CPUExecutionProvider", copy_max_abs=0.0,
    )


def test_round_trip_returns_the_same_outputs(tmp_path):
    cache = BaselineCache(tmp_path)
    key = baseline_key({"weights_sha256": "a" * 64})
    assert cache.load(key) is None
    cache.store(key, CachedBaseline(_outputs(), ["Gemm", "Relu", "Gemm"]))
    got = cache.load(key)
    assert got is not None and got.op_types == ["Gemm", "Relu", "Gemm"]
    for name in ("correct", "total", "test_idx", "test_logits", "test_features", "train_logits"):
        np.testing.assert_array_equal(getattr(got.outputs, name), getattr(_outputs(), name))
    assert got.outputs.provider == "CPUExecutionProvider"


def test_a_damaged_entry_is_dropped_not_trusted(tmp_path):
    cache = BaselineCache(tmp_path)
    key = baseline_key({"weights_sha256": "b" * 64})
    path = cache.store(key, CachedBaseline(_outputs(), ["Gemm"]))
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    assert cache.load(key) is None and not path.exists()
    # an intact file stored under another key does not serve this one
    other = baseline_key({"weights_sha256": "c" * 64})
    cache.store(other, CachedBaseline(_outputs(), ["Gemm"]))
    cache.path(other).rename(cache.path(key))
    assert cache.load(key) is None


def test_an_edited_entry_with_a_matching_layout_fails_its_checksum(tmp_path):
    cache = BaselineCache(tmp_path)
    key = baseline_key({"weights_sha256": "d" * 64})
    path = cache.store(key, CachedBaseline(_outputs(), ["Gemm"]))
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["correct"] = np.array([5, 5])  # a better original
    np.savez(path, **arrays)
    assert cache.load(key) is None


def test_key_changes_with_anything_the_baseline_depends_on():
    base = {"weights_sha256": "e" * 64, "seed": 0, "opset": 18}
    keys = {baseline_key(base), baseline_key({**base, "seed": 1}), baseline_key({**base, "opset": 19}),
            baseline_key({**base, "weights_sha256": "f" * 64})}
    assert len(keys) == 4
    assert baseline_key(dict(reversed(list(base.items())))) == baseline_key(base)


def test_data_fingerprint_follows_files_and_labels(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (8, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", x=x, y=np.arange(8) % 2)
    np.savez(tmp_path / "test.npz", x=x[:4], y=np.arange(4) % 2)
    cfg = DataConfig(dataset="npz", root=str(tmp_path))
    ds = load_dataset(cfg, tmp_path / "c")
    fp = data_fingerprint(ds.train, ds.test)
    assert data_fingerprint(*_splits(load_dataset(cfg, tmp_path / "c"))) == fp
    np.savez(tmp_path / "test.npz", x=x[:4][::-1].copy(), y=np.arange(4) % 2)  # new pixels, same labels
    assert data_fingerprint(*_splits(load_dataset(cfg, tmp_path / "c"))) != fp
    digits = load_dataset(DataConfig())
    assert data_fingerprint(digits.train, digits.test) == data_fingerprint(*_splits(load_dataset(DataConfig())))


def _splits(ds):
    return ds.train, ds.test
