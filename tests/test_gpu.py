"""The digits pipeline on CUDA end to end; skipped without CUDA (tests/conftest.py).

What a GPU serving fleet relies on: a release built with ``--device cuda``
records that onnxruntime really ran on CUDAExecutionProvider (not a silent CPU
fallback), and the shipped model.onnx gives the same logits on the CUDA and
CPU providers, so a model verified on one can be served on the other.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from nhle_pipeline.pipeline.cli import cli
from nhle_pipeline.pipeline.config import parse_config
from nhle_pipeline.pipeline.loading import load_data
from nhle_pipeline.verify.ort import CPU, CUDA, open_session, ort_logits

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

# fp32 kernels differ between providers (cuBLAS vs MLAS) only in summation
# order; on the digits MLP that is far below this.
GPU_CPU_ATOL = 1e-4


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cuda_release_records_cuda_and_matches_cpu_logits(make_config, tmp_path):
    r = invoke("run", make_config(device="cuda"), "--device", "cuda")
    assert r.exit_code == 0, r.output
    rel = tmp_path / "releases" / "digits-test"
    m = json.loads((rel / "manifest.json").read_text())
    assert m["passed"] is True
    assert m["runtime"]["torch_device"].startswith("cuda")
    assert m["runtime"]["onnxruntime_provider"] == CUDA

    data = load_data(parse_config(m["config"]))
    x = data.test.x  # (N, 1, 8, 8) float32 in [0, 1]
    gpu_sess, gpu = open_session(rel / "model.onnx", "cuda")
    cpu_sess, cpu = open_session(rel / "model.onnx", "cpu")
    assert (gpu, cpu) == (CUDA, CPU)
    bs = m["config"]["data"]["batch_size"]
    on_gpu, on_cpu = ort_logits(gpu_sess, x, bs), ort_logits(cpu_sess, x, bs)  # (N, 10) each
    assert on_gpu.shape == on_cpu.shape == (len(x), m["num_classes"])
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=0, atol=GPU_CPU_ATOL)
    assert np.array_equal(on_gpu.argmax(1), on_cpu.argmax(1))

    # the Triton copy is the same bytes, so it inherits this parity
    triton_copy = rel / "triton" / "digits-test" / "1" / "model.onnx"
    assert triton_copy.read_bytes() == (rel / "model.onnx").read_bytes()

    v = invoke("verify", rel, "--device", "cuda")
    assert v.exit_code == 0, v.output
