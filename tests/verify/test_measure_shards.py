"""Sharded passes: every world-th batch per rank, merged back into the single-process result."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nhle_pipeline.export.onnx_export import export_onnx
from nhle_pipeline.pipeline.config import DataConfig
from nhle_pipeline.pipeline.data import load_dataset
from nhle_pipeline.verify.measure import merge_outputs, run_model, shard_rows


def test_shard_rows_split_whole_batches_round_robin():
    rows = np.arange(10)
    assert shard_rows(rows, 3, 0, 2).tolist() == [0, 1, 2, 6, 7, 8]
    assert shard_rows(rows, 3, 1, 2).tolist() == [3, 4, 5, 9]
    assert shard_rows(rows, 3, 3, 4).tolist() == [9]
    assert shard_rows(rows, 20, 1, 2).tolist() == []  # more ranks than batches: nothing to do
    assert shard_rows(rows, 3, 0, 1).tolist() == rows.tolist()


def test_merged_shards_equal_one_pass(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    export_onnx(model, (1, 8, 8), tmp_path / "m.onnx", opset=18)
    data = load_dataset(DataConfig())
    kw = dict(seed=0, device="cpu", batch_size=64, scratch=tmp_path)
    whole = run_model(tmp_path / "m.onnx", "3", data.train, data.test, 10, **kw)
    parts = [run_model(tmp_path / "m.onnx", "3", data.train, data.test, 10, shard=(r, 3), **kw) for r in range(3)]
    assert sum(len(p.test_idx) for p in parts) == len(whole.test_idx) == 450
    merged = merge_outputs(parts)
    for name in ("correct", "total", "test_idx", "test_logits", "test_features", "train_idx", "train_logits",
                 "train_features"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(whole, name), err_msg=name)
    assert merged.copy_max_abs == 0.0


def test_shards_from_different_providers_are_refused(tmp_path):
    """A rank whose onnxruntime fell back to the CPU while the others ran on CUDA: the merged
    pass would be recorded as CUDA's, so the merge refuses it (one provider per verification)."""
    import dataclasses

    import pytest

    from nhle_pipeline.verify.errors import ProviderUnavailable

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    export_onnx(model, (1, 8, 8), tmp_path / "m.onnx", opset=18)
    data = load_dataset(DataConfig())
    kw = dict(seed=0, device="cpu", batch_size=64, scratch=tmp_path)
    parts = [run_model(tmp_path / "m.onnx", "1", data.train, data.test, 10, shard=(r, 2), **kw) for r in range(2)]
    assert merge_outputs(parts).provider == "CPUExecutionProvider"
    parts[1] = dataclasses.replace(parts[1], provider="CUDAExecutionProvider")
    with pytest.raises(ProviderUnavailable, match="different onnxruntime providers"):
        merge_outputs(parts)
