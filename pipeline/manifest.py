"""The run's manifest: everything needed to audit and reproduce a release."""

from __future__ import annotations

import platform

import numpy as np
import torch

import pipeline
from pipeline.config import Config

METHOD = "nhle-cwm"


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import sklearn
    import torchvision

    return {
        "pipeline": pipeline.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def onnx_provenance(cfg: Config, weights_sha256: str | None) -> dict[str, str]:
    """What is stamped into model.onnx's metadata_props (no timestamps: builds stay reproducible)."""
    return {
        "method": METHOD,
        "forget_classes": ",".join(map(str, cfg.forget.classes)),
        "num_classes": str(cfg.model.num_classes),
        "source_model_sha256": weights_sha256 or "",
        "config_sha256": cfg.sha256(),
        "cwm_mode": cfg.unlearn.cwm.mode,
        "nhle_variant": cfg.unlearn.nhle.variant,
        "pipeline_version": pipeline.__version__,
    }


def build_manifest(
    cfg: Config,
    *,
    name: str,
    passed: bool,
    weights_sha256: str | None,
    head_name: str,
    metrics: dict,
    gates: list[dict],
    torch_device: str,
    provider: str,
    external_data: list[str],
    timings: dict[str, float],
) -> dict:
    return {
        "format": 1,
        "name": name,
        "status": "released" if passed else "gate_failed",
        "method": METHOD,
        "forget_classes": list(cfg.forget.classes),
        "num_classes": cfg.model.num_classes,
        "seed": cfg.seed,
        "config": cfg.model_dump(mode="json"),
        "config_sha256": cfg.sha256(),
        "source_model": {"path": str(cfg.model.weights), "arch": cfg.model.arch, "sha256": weights_sha256},
        "head": head_name,
        "metrics": metrics,
        "gates": gates,
        "passed": passed,
        "runtime": {
            "torch_device": torch_device,
            "onnxruntime_provider": provider,
            "versions": library_versions(),
            "platform": platform.platform(),
        },
        "external_data": external_data,
        "timings_s": dict(timings),
    }
