"""Derived releases (pipeline/quantize.py, pipeline/release/derived.py, export/precision.py,
verify/precision.py): each precision releases and verifies, a broken derivative is not
released, a forged chain is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nhle_pipeline.pipeline.errors import (
    GateFailure,
    InputError,
    ReleaseError,
    TamperedReleaseError,
)
from nhle_pipeline.verify.gates import GatesConfig
from nhle_pipeline.verify.precision import derived_gates
from nhle_pipeline.verify.verification import forgotten_logit_spread

# --- fast: the judgment alone ------------------------------------------------------------------


def test_forgotten_logit_spread_is_zero_only_for_a_constant_column():
    logits = np.array([[-30.0, 1.0, 2.0], [-30.0, 5.0, -1.0], [-30.0, 0.5, 0.0]], dtype=np.float32)
    assert forgotten_logit_spread(logits, [0]) == 0.0
    assert forgotten_logit_spread(logits, [0, 1]) == pytest.approx(4.5)
    logits[1, 0] = np.inf
    assert forgotten_logit_spread(logits, [0]) == float("inf")


def test_derived_gates_judge_agreement_not_atol():
    metrics = {"acc_f": 0.0, "delta_acc_r": -0.004, "evidence_copy_max_abs": 0.2, "agreement": 0.995,
               "forgotten_logit_spread": 0.0, "evidence": {}}
    gates = {g.name: g for g in derived_gates(metrics, GatesConfig())}
    assert list(gates) == ["acc_f", "acc_r_drop", "agreement", "cwm_in_graph"]  # no parity, no evidence_copy
    assert all(g.passed for g in gates.values())
    low = {g.name: g.passed for g in derived_gates({**metrics, "agreement": 0.98}, GatesConfig())}
    assert low["agreement"] is False
    strict = {g.name: g.passed for g in derived_gates(metrics, GatesConfig(), agreement_min=1.0)}
    assert strict["agreement"] is False
    leaky = {g.name: g.passed for g in derived_gates({**metrics, "forgotten_logit_spread": 0.5}, GatesConfig())}
    assert leaky["cwm_in_graph"] is False
    missing = {g.name: g.passed for g in derived_gates({**metrics, "agreement": None}, GatesConfig())}
    assert missing["agreement"] is False


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory) -> Path:
    """An untrained digits-shaped MLP (64-256-128-10, head ``classifier``), exported."""
    import torch

    from nhle_pipeline.export.onnx_export import export_onnx
    from nhle_pipeline.pipeline.models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    export_onnx(build_model("mlp", num_classes=10, input_shape=(1, 8, 8)).eval(), (1, 8, 8), path, opset=18)
    return path


@pytest.mark.parametrize("mode", ["int8-static", "int8-dynamic", "fp16"])
def test_derive_makes_each_precision_and_the_head_is_still_found(mode, mlp_onnx, tmp_path):
    """onnxruntime's tools give the expected graphs; the evidence's copy finds the head's input in each."""
    import onnx
    import onnxruntime as ort

    from nhle_pipeline.export.precision import derive
    from nhle_pipeline.pipeline.config import DataConfig
    from nhle_pipeline.pipeline.data import load_dataset
    from nhle_pipeline.verify.features import with_feature_output

    data = load_dataset(DataConfig())
    calib = data.train.image_batches(np.arange(64), 32) if mode == "int8-static" else None
    settings = derive(mlp_onnx, tmp_path / "d.onnx", mode, calib)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "d.onnx")).graph.node}
    expected = {"int8-static": "QuantizeLinear", "int8-dynamic": "MatMulInteger", "fp16": "Cast"}[mode]
    assert expected in ops, ops
    if mode == "int8-static":
        assert settings["calibration_images"] == 64 and settings["quant_format"] == "QDQ"
    copy = with_feature_output(tmp_path / "d.onnx", "classifier", tmp_path / "f.onnx")
    sess = ort.InferenceSession(str(copy), providers=["CPUExecutionProvider"])
    logits, feats = sess.run(None, {"input": data.test.x[:8]})[:2]
    assert logits.shape == (8, 10) and feats.dtype == np.float32 and feats.shape == (8, 128)


def test_derive_refuses_an_unknown_mode_and_static_without_calibration(mlp_onnx, tmp_path):
    from nhle_pipeline.export.precision import derive

    with pytest.raises(ValueError, match="unknown precision mode 'int4'"):
        derive(mlp_onnx, tmp_path / "d.onnx", "int4")
    with pytest.raises(ValueError, match="needs calibration"):
        derive(mlp_onnx, tmp_path / "d.onnx", "int8-static")
    assert not (tmp_path / "d.onnx").exists()


# --- slow: on a real release -------------------------------------------------------------------


@pytest.mark.slow
def test_a_users_default_quantize_static_keeps_acc_r_within_001(digits_release, tmp_path):
    """What a user does with the release: onnxruntime's quantize_static, every default, on
    training images. The default (calibrated) CWM keeps Acc_R within 0.01 of fp32."""
    import logging

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    from nhle_pipeline.pipeline.config import DataConfig
    from nhle_pipeline.pipeline.data import load_dataset

    data = load_dataset(DataConfig())

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": data.train.x[i : i + 64]} for i in range(0, 512, 64)])

        def get_next(self):
            return next(self.batches, None)

    logging.disable(logging.WARNING)
    try:
        quantize_static(str(digits_release / "model.onnx"), str(tmp_path / "int8.onnx"), Reader())
    finally:
        logging.disable(logging.NOTSET)

    def accuracies(path):
        pred = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"input": data.test.x})[0].argmax(1)
        y = data.test.y
        return float((pred[y != 0] == y[y != 0]).mean()), float((pred[y == 0] == 0).mean())

    fp32_r, fp32_f = accuracies(digits_release / "model.onnx")
    int8_r, int8_f = accuracies(tmp_path / "int8.onnx")
    assert fp32_r > 0.95 and fp32_f == 0.0
    assert int8_f == 0.0 and abs(int8_r - fp32_r) <= 0.01, (fp32_r, int8_r)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8-static", "int8-dynamic", "fp16"])
def test_each_mode_releases_and_verifies_with_its_parent(mode, digits_release, tmp_path):
    from nhle_pipeline.pipeline.checkpoint import sha256_file
    from nhle_pipeline.pipeline.quantize import quantize_release
    from nhle_pipeline.pipeline.release.check import read_manifest, verify_release
    from nhle_pipeline.verify.ort import read_metadata

    parent = read_manifest(digits_release)
    result = quantize_release(digits_release, mode, tmp_path / "out" / f"digits-{mode}")
    rel, m = result.path, result.manifest
    assert rel == tmp_path / "out" / f"digits-{mode}" and not list((tmp_path / "out" / ".staging").glob("*"))
    d = m.derived
    assert d.precision == mode and d.parent.name == parent.name
    assert d.parent.manifest_sha256 == parent.manifest_sha256
    assert d.parent.model_sha256 == sha256_file(digits_release / "model.onnx")
    assert m.metrics.acc_f == 0.0
    assert abs(m.metrics.unlearned.acc_r - parent.metrics.unlearned.acc_r) <= 0.01
    assert m.metrics.delta_acc_r == pytest.approx(m.metrics.unlearned.acc_r - parent.metrics.original.acc_r)
    assert d.agreement >= 0.99 and d.agreement_samples == 450 and d.forgotten_logit_spread == 0.0
    assert (d.calibration_samples == 512) == (mode == "int8-static")
    assert {g.name for g in m.gates} == {"acc_f", "acc_r_drop", "agreement", "cwm_in_graph"}
    files = set(read_manifest(rel).files)
    assert files >= {"model.onnx", "report.html", "report.md", f"triton/digits-{mode}/1/model.onnx",
                     f"triton/digits-{mode}/config.pbtxt"}
    assert "model.safetensors" not in files  # the PyTorch weights are the fp32 parent's
    assert set(read_manifest(digits_release).files) - {"model.onnx", "report.html", "report.md", "model.safetensors"} == {
        f.replace(f"triton/digits-{mode}/", f"triton/{parent.name}/") for f in files - {"model.onnx", "report.html", "report.md"}
    }  # the parent's Triton layout (labels.txt where it has one)
    meta = read_metadata(rel / "model.onnx")
    assert meta["precision"] == mode and meta["config_sha256"] == parent.config_sha256
    assert f"{mode} of '{parent.name}'" in (rel / "report.md").read_text()
    size = (rel / "model.onnx").stat().st_size
    assert size < 0.6 * (digits_release / "model.onnx").stat().st_size  # INT8 ~ 1/4, fp16 ~ 1/2

    check = verify_release(rel, parent=digits_release)
    assert check.passed, [g.line() for g in check.gates if not g.passed]
    assert {g.name for g in check.gates} >= {"agreement", "cwm_in_graph", "reproduces_manifest"}
    assert check.metrics["agreement"] == pytest.approx(d.agreement)
    assert any("chain: the parent" in n for n in check.notes)


@pytest.fixture(scope="module")
def suppress_release(digits_weights, tmp_path_factory) -> Path:
    """A release with the fixed -1e4 CWM bias (cwm.mode suppress): static INT8 saturates on it."""
    from nhle_pipeline.pipeline.config import load_config
    from nhle_pipeline.pipeline.run import run_pipeline
    from tests.conftest import digits_config, write_config

    root = tmp_path_factory.mktemp("suppress")
    cfg = write_config(root / "run.yaml", digits_config(
        digits_weights, root / "releases", release={"name": "digits-suppress"},
        unlearn={"cwm": {"mode": "suppress"}}))
    return run_pipeline(load_config(cfg), cfg).path


@pytest.mark.slow
def test_a_saturating_calibration_fails_its_gates_and_releases_nothing(suppress_release, tmp_path):
    """The issue's case: the -1e4 bias sets the output's INT8 range, retained logits collapse."""
    from nhle_pipeline.pipeline.quantize import quantize_release
    from nhle_pipeline.pipeline.release.manifest import load_manifest

    out = tmp_path / "out" / "digits-suppress-int8"
    with pytest.raises(GateFailure, match="acc_r_drop, agreement; nothing released") as e:
        quantize_release(suppress_release, "int8-static", out)
    assert not out.exists()
    m = load_manifest(Path(e.value.report_dir))
    assert m.status == "gate_failed" and not m.passed
    assert m.metrics.unlearned.acc_r < 0.5 and m.derived.agreement < 0.5  # measured 0.146, 0.138
    assert m.metrics.acc_f == 0.0  # the masked class stays masked; the others are what broke


@pytest.mark.slow
def test_quantize_refuses_a_tampered_or_derived_parent_and_writes_nothing(digits_release, tmp_path):
    from nhle_pipeline.pipeline.quantize import quantize_release
    from tests.test_bad_inputs import snapshot

    parent = tmp_path / "parent" / "digits-test"
    shutil.copytree(digits_release, parent)
    m = json.loads((parent / "manifest.json").read_text())
    m["metrics"]["unlearned"]["acc_r"] = 1.0
    (parent / "manifest.json").write_text(json.dumps(m))
    before = snapshot(tmp_path)
    with pytest.raises(TamperedReleaseError, match="edited after release"):
        quantize_release(parent, "fp16", tmp_path / "out" / "x")
    with pytest.raises(InputError, match="--calibration-samples: 0"):
        quantize_release(digits_release, "int8-static", tmp_path / "out" / "x", calibration_samples=0)
    with pytest.raises(InputError, match="overlaps the parent"):
        quantize_release(digits_release, "fp16", digits_release, force=True)
    assert snapshot(tmp_path) == before

    derived = quantize_release(digits_release, "int8-dynamic", tmp_path / "d" / "digits-dyn").path
    with pytest.raises(ReleaseError, match="a derived release .* not an fp32 parent"):
        quantize_release(derived, "fp16", tmp_path / "d" / "digits-dyn-fp16")
    assert not (tmp_path / "d" / "digits-dyn-fp16").exists()


@pytest.mark.slow
def test_verify_refuses_a_parent_that_is_not_the_named_one(digits_release, suppress_release, tmp_path):
    """The chain: another release as --parent, or a derived manifest forged to name another parent."""
    from nhle_pipeline.pipeline.quantize import quantize_release
    from nhle_pipeline.pipeline.release.check import verify_release
    from nhle_pipeline.pipeline.release.manifest import MANIFEST_SEAL, manifest_seal

    rel = quantize_release(digits_release, "fp16", tmp_path / "d" / "digits-fp16").path
    with pytest.raises(TamperedReleaseError, match="--parent: .* has seal"):
        verify_release(rel, parent=suppress_release)
    m = json.loads((rel / "manifest.json").read_text())
    m["derived"]["parent"]["model_sha256"] = "0" * 64
    m[MANIFEST_SEAL] = manifest_seal(m)
    (rel / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TamperedReleaseError, match="metadata 'parent_model_sha256'"):
        verify_release(rel, parent=digits_release)  # the model's own provenance names the real parent
