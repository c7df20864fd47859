"""onnxruntime sessions (the one place one is opened), batched logits, provenance as servers read it.

The provider actually used is read back from ``session.get_providers()``:
asking for CUDA is not proof of running on it (onnxruntime-gpu silently
falls back to the CPU when CUDA libraries are missing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nhle_pipeline.export.errors import OnnxFileError
from nhle_pipeline.export.metadata import PREFIX
from nhle_pipeline.verify.errors import ProviderUnavailable

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# The CUDA provider's options. Its default computes fp32 matrix products and convolutions in
# TF32 on Ampere and later GPUs (inputs rounded to a 10-bit mantissa: up to 5e-3 on the digits
# logits when simulated, five times the parity gate), and times cuDNN's convolution algorithms anew in each
# session, so two sessions of one model may pick different ones (the evidence-copy check wants
# 1e-6). Verification is in exact fp32 with a fixed choice of algorithm.
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}
ORT_LOG_ERROR = 3  # onnxruntime severity: 0 verbose .. 3 error, 4 fatal


def cuda_driver_present() -> bool:
    """Is the CUDA driver library loadable? (Avoids onnxruntime-gpu's noisy failed attempt.)"""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def open_session(path: str | Path, device: str = "auto", device_id: int = 0):
    """An InferenceSession on CUDA when ``device`` allows and it really runs there, else CPU.

    Returns ``(session, provider)``; ``device: cuda`` without a working CUDA
    provider is an input error, not a silent fallback.
    """
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise OnnxFileError(f"{p}: no such ONNX file")
    ort.set_default_logger_severity(ORT_LOG_ERROR)
    opts = ort.SessionOptions()
    opts.log_severity_level = ORT_LOG_ERROR
    want_cuda = (
        device in ("auto", "cuda") and CUDA in ort.get_available_providers() and cuda_driver_present()
    )
    # device_id: the GPU of this process (torchrun: LOCAL_RANK), so ranks do not share GPU 0
    providers = [(CUDA, {"device_id": str(device_id), **CUDA_OPTIONS}), CPU] if want_cuda else [CPU]
    if want_cuda and hasattr(ort, "preload_dlls"):
        try:  # use the CUDA/cuDNN libraries that PyTorch's wheels installed
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - fall back to the system libraries
            pass
    try:
        sess = ort.InferenceSession(str(p), sess_options=opts, providers=providers)
    except Exception as e:
        raise OnnxFileError(f"{p}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from e
    used = sess.get_providers()[0]
    if device == "cuda" and used != CUDA:
        raise ProviderUnavailable("device: 'cuda' requested, but onnxruntime's CUDA provider is not usable here")
    return sess, used


def ort_logits(sess, x: np.ndarray, batch_size: int) -> np.ndarray:
    """(N, C, H, W) float32 -> (N, classes) logits, in batches."""
    name = sess.get_inputs()[0].name
    out = [sess.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float32)


def read_metadata(path: str | Path) -> dict[str, str]:
    """Provenance as onnxruntime reads it (``get_modelmeta().custom_metadata_map``), prefix stripped."""
    sess, _ = open_session(path, "cpu")
    meta = sess.get_modelmeta()
    out = {k[len(PREFIX):]: v for k, v in meta.custom_metadata_map.items() if k.startswith(PREFIX)}
    out["producer"] = meta.producer_name
    return out
