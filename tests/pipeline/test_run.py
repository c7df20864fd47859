"""The runner end to end, in-process: streamed data, the baseline cache, one pass per model."""

from __future__ import annotations

import numpy as np
import pytest

from nhle_pipeline.pipeline.config import DataConfig, load_config
from nhle_pipeline.pipeline.data import Split, load_dataset
from nhle_pipeline.pipeline.run import run_pipeline

pytestmark = pytest.mark.slow


def _digits_as_npz(folder):
    """The embedded digits written as uint8 npz (compressed), so the digits MLP fits them."""
    ds = load_dataset(DataConfig())
    folder.mkdir()
    for name, split in (("train", ds.train), ("test", ds.test)):
        x = np.round(split.x[:, 0] * 255).astype(np.uint8)  # (N, 8, 8)
        np.savez_compressed(folder / f"{name}.npz", x=x, y=split.y)
    return folder


def test_second_request_is_served_by_the_cache_with_the_same_numbers(make_config, tmp_path):
    first = run_pipeline(load_config(make_config("a.yaml", release={"name": "a"})), "a.yaml")
    second = run_pipeline(load_config(make_config("b.yaml", release={"name": "b"})), "b.yaml")
    third = run_pipeline(load_config(make_config("c.yaml", release={"name": "c"}, forget={"classes": [3]})), "c.yaml")
    off = run_pipeline(load_config(make_config("d.yaml", release={"name": "d"})), "d.yaml", use_cache=False)
    assert first.manifest.baseline_cache in ("miss", "hit")  # another test may have cached this model
    assert second.manifest.baseline_cache == "hit" and third.manifest.baseline_cache == "hit"
    assert off.manifest.baseline_cache == "off"
    for m in (second.manifest, off.manifest):
        assert m.metrics.original == first.manifest.metrics.original
        assert m.metrics.evidence.original == first.manifest.metrics.evidence.original
        assert m.metrics.unlearned == first.manifest.metrics.unlearned
    # a different forget request against the same original: same per-class accuracy, other grouping
    assert third.manifest.metrics.original.per_class == first.manifest.metrics.original.per_class
    assert third.manifest.metrics.original.n_forget != first.manifest.metrics.original.n_forget
    assert "baseline" in first.manifest.timings_s and second.manifest.metrics.graph_unchanged


def test_a_run_on_npz_streams_and_never_holds_a_split(make_config, tmp_path, monkeypatch):
    root = _digits_as_npz(tmp_path / "npz")

    def whole_split(self):
        raise AssertionError("the pipeline materialised a whole split")

    monkeypatch.setattr(Split, "x", property(whole_split))
    cfg = load_config(make_config(data={"dataset": "npz", "root": str(root), "batch_size": 64}))
    result = run_pipeline(cfg, "run.yaml", use_cache=False)
    m = result.manifest
    assert m.metrics.unlearned.acc_f == 0.0 and m.metrics.original.acc_r > 0.9
    assert m.metrics.evidence_copy_max_abs is not None and m.metrics.evidence_copy_max_abs <= 1e-6
    assert m.metrics.parity_samples == 450 and m.metrics.original.n_forget + m.metrics.original.n_retain == 450


def test_calibrated_cwm_release_survives_static_int8(make_config, tmp_path):
    """The default CWM bias sits near the model's own logits: onnxruntime's static INT8 of the
    release keeps Acc_R within 0.01 of fp32 (the fixed -1e4 bias dropped it to 0.13)."""
    import logging

    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    result = run_pipeline(load_config(make_config()), "run.yaml")
    cwm = result.manifest.metrics.cwm
    assert cwm.mode == "calibrated" and cwm.calibration.samples == 1024
    assert cwm.bias == pytest.approx(cwm.calibration.lowest_retained_logit - cwm.calibration.margin, abs=1e-4)
    assert -100 < cwm.bias < cwm.calibration.lowest_retained_logit
    data = load_dataset(DataConfig())

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": data.train.x[i : i + 32]} for i in range(0, 512, 32)])

        def get_next(self):
            return next(self.batches, None)

    def retained_and_forgotten_accuracy(path):
        pred = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"input": data.test.x})[0].argmax(1)
        y = data.test.y
        return float((pred[y != 0] == y[y != 0]).mean()), float((pred[y == 0] == 0).mean())

    model = result.path / "model.onnx"
    logging.disable(logging.WARNING)  # onnxruntime.quantization's advice to pre-process
    try:
        quantize_static(str(model), str(tmp_path / "int8.onnx"), Calibration(), quant_format=QuantFormat.QDQ)
        quantize_dynamic(str(model), str(tmp_path / "int8-dynamic.onnx"), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    fp32_r, fp32_f = retained_and_forgotten_accuracy(model)
    for derived in ("int8.onnx", "int8-dynamic.onnx"):
        int8_r, int8_f = retained_and_forgotten_accuracy(tmp_path / derived)
        assert int8_f == 0.0, derived
        assert abs(int8_r - fp32_r) <= 0.01, (derived, fp32_r, int8_r)
