"""The digits pipeline on CUDA end to end; skipped without CUDA (tests/conftest.py).

What a GPU serving fleet relies on: a release built with ``--device cuda``
records that onnxruntime really ran on CUDAExecutionProvider (not a silent CPU
fallback), and the shipped model.onnx gives the same logits on the CUDA and
CPU providers, so a model verified on one can be served on the other. Those
tests also need onnxruntime's CUDA provider (onnxruntime-gpu) and are skipped,
saying so, where PyTorch sees a GPU but onnxruntime has only its CPU provider;
NHLE on CUDA is tested there on its own (``--device auto``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from nhle_pipeline.pipeline.cli import cli
from nhle_pipeline.pipeline.config import parse_config
from nhle_pipeline.pipeline.data import eval_batch_size
from nhle_pipeline.pipeline.loading import load_data
from nhle_pipeline.verify.ort import CPU, CUDA, open_session, ort_logits

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def ort_cuda_usable() -> bool:
    import onnxruntime as ort

    from nhle_pipeline.verify.ort import cuda_driver_present

    return CUDA in ort.get_available_providers() and cuda_driver_present()


needs_ort_cuda = pytest.mark.skipif(
    not ort_cuda_usable(), reason="needs onnxruntime's CUDA provider (onnxruntime-gpu with a CUDA driver)"
)

# fp32 kernels differ between providers (cuBLAS vs MLAS) only in summation
# order; on the digits MLP that is far below this.
GPU_CPU_ATOL = 1e-4


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@needs_ort_cuda
def test_cuda_release_records_cuda_and_matches_cpu_logits(make_config, tmp_path):
    r = invoke("run", make_config(device="cuda"), "--device", "cuda")
    assert r.exit_code == 0, r.output
    rel = tmp_path / "releases" / "digits-test"
    m = json.loads((rel / "manifest.json").read_text())
    assert m["passed"] is True
    assert m["runtime"]["torch_device"].startswith("cuda")
    assert m["runtime"]["onnxruntime_provider"] == CUDA

    cfg = parse_config(m["config"])
    data = load_data(cfg)
    x = data.test.x  # (N, 1, 8, 8) float32 in [0, 1]
    gpu_sess, gpu = open_session(rel / "model.onnx", "cuda")
    cpu_sess, cpu = open_session(rel / "model.onnx", "cpu")
    assert (gpu, cpu) == (CUDA, CPU)
    bs = eval_batch_size(cfg.data, data.input_shape)  # data.batch_size, or the automatic one
    on_gpu, on_cpu = ort_logits(gpu_sess, x, bs), ort_logits(cpu_sess, x, bs)  # (N, 10) each
    assert on_gpu.shape == on_cpu.shape == (len(x), m["num_classes"])
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=0, atol=GPU_CPU_ATOL)
    assert np.array_equal(on_gpu.argmax(1), on_cpu.argmax(1))

    # the Triton copy is the same bytes, so it inherits this parity
    triton_copy = rel / "triton" / "digits-test" / "1" / "model.onnx"
    assert triton_copy.read_bytes() == (rel / "model.onnx").read_bytes()

    v = invoke("verify", rel, "--device", "cuda")
    assert v.exit_code == 0, v.output


def test_nhle_on_cuda_matches_the_cpu_run(make_config, tmp_path):
    """``--device auto`` on a GPU machine: NHLE and CWM calibration run on CUDA (onnxruntime on
    whichever provider it has). The release passes and forgets as the same run on the CPU does:
    the same stop, about the same number of steps, the same retained accuracy within 4 of the
    405 retained test images, and the two shipped models agree on ≥ 99 % of the test argmaxes."""
    runs = {}
    for device in ("auto", "cpu"):
        out = tmp_path / f"out-{device}"
        r = invoke("run", make_config(f"{device}.yaml", device=device), "--device", device, "--out", out)
        assert r.exit_code == 0, r.output
        rel = out / "digits-test"
        runs[device] = (rel, json.loads((rel / "manifest.json").read_text()))
    (gpu_rel, gpu), (cpu_rel, cpu) = runs["auto"], runs["cpu"]
    assert gpu["runtime"]["torch_device"].startswith("cuda")
    assert cpu["runtime"]["torch_device"] == "cpu"
    assert gpu["passed"] and cpu["passed"]
    g_nhle, c_nhle = gpu["metrics"]["nhle"], cpu["metrics"]["nhle"]
    assert g_nhle["stopped"] == c_nhle["stopped"] == "forgotten"
    assert abs(g_nhle["steps"] - c_nhle["steps"]) <= max(2, c_nhle["steps"] // 10)
    assert gpu["metrics"]["acc_f"] == cpu["metrics"]["acc_f"] == 0.0
    assert abs(gpu["metrics"]["delta_acc_r"] - cpu["metrics"]["delta_acc_r"]) <= 4 / 405 + 1e-9

    cfg = parse_config(cpu["config"])
    data = load_data(cfg)
    bs = eval_batch_size(cfg.data, data.input_shape)
    preds = {}
    for name, rel in (("gpu", gpu_rel), ("cpu", cpu_rel)):
        sess, _ = open_session(rel / "model.onnx", "cpu")
        preds[name] = ort_logits(sess, data.test.x, bs).argmax(1)  # (N,)
    assert (preds["gpu"] == preds["cpu"]).mean() >= 0.99
