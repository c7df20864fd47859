"""Reduced-precision derivatives of an exported model, made by onnxruntime's own tools.

- ``int8-static``: ``onnxruntime.quantization.quantize_static`` with its defaults
  (QDQ format, signed INT8 weights and activations, per-tensor, MinMax
  calibration) over calibration batches the caller supplies.
- ``int8-dynamic``: ``onnxruntime.quantization.quantize_dynamic`` with its
  defaults (INT8 weights; activations quantized at run time).
- ``fp16``: ``onnxruntime.transformers.float16.convert_float_to_float16`` with
  ``keep_io_types=True``: the input and the logits stay float32, so a server's
  contract (and the Triton config) does not change.

No quantization arithmetic lives here: the settings are recorded as passed, so a
deployer can redo the derivative with the same call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from nhle_pipeline.export.errors import ExportError
from nhle_pipeline.export.onnx_file import load_onnx

INT8_STATIC, INT8_DYNAMIC, FP16 = "int8-static", "int8-dynamic", "fp16"
MODES = (INT8_STATIC, INT8_DYNAMIC, FP16)


def _reader(batches: Iterable[np.ndarray], input_name: str):
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        """Feeds ``batches`` (float32 (k, C, H, W)) to the calibrator, once each."""

        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(batches)
            self.seen = 0

        def get_next(self):
            x = next(self._it, None)
            if x is None:
                return None
            self.seen += len(x)
            return {input_name: np.ascontiguousarray(x, dtype=np.float32)}

    return BatchReader()


def derive(src: str | Path, dst: str | Path, mode: str, calibration: Iterable[np.ndarray] | None = None,
           input_name: str = "input") -> dict:
    """Write the ``mode`` derivative of ``src`` to ``dst``; return the settings as passed to the tool
    (``int8-static`` also: ``calibration_images``, how many images the calibrator saw)."""
    src, dst = str(src), str(dst)
    if mode not in MODES:
        raise ValueError(f"unknown precision mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode == INT8_STATIC and calibration is None:
        raise ValueError("int8-static needs calibration batches")
    logging.disable(logging.WARNING)  # the quantizer logs advice ("pre-process the model") at WARNING
    try:
        if mode == INT8_STATIC:
            from onnxruntime.quantization import (
                CalibrationMethod,
                QuantFormat,
                QuantType,
                quantize_static,
            )

            reader = _reader(calibration, input_name)
            settings = {"tool": "onnxruntime.quantization.quantize_static", "quant_format": "QDQ",
                        "activation_type": "QInt8", "weight_type": "QInt8", "per_channel": False,
                        "calibrate_method": "MinMax"}
            quantize_static(src, dst, reader, quant_format=QuantFormat.QDQ, per_channel=False,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            settings["calibration_images"] = reader.seen
        elif mode == INT8_DYNAMIC:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            settings = {"tool": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
                        "per_channel": False}
            quantize_dynamic(src, dst, per_channel=False, weight_type=QuantType.QInt8)
        else:
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            settings = {"tool": "onnxruntime.transformers.float16.convert_float_to_float16",
                        "keep_io_types": True, "then": "onnxruntime.transformers.onnx_model.OnnxModel.topological_sort"}
            from onnxruntime.transformers.onnx_model import OnnxModel

            half = OnnxModel(convert_float_to_float16(load_onnx(src), keep_io_types=True))
            half.topological_sort()  # the converter appends the input/output Casts last; the checker wants order
            onnx.save(half.model, dst)
    except Exception as e:  # the tools raise ValueError, RuntimeError, onnx errors alike
        raise ExportError(f"{src}: onnxruntime's {mode} conversion failed ({str(e).splitlines()[0][:200]})") from e
    finally:
        logging.disable(logging.NOTSET)
    return settings
