"""The run's manifest: everything needed to audit and reproduce a release, its file
digests and its seal."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

import nhle_pipeline.pipeline
from nhle_pipeline.pipeline.checkpoint import sha256_file
from nhle_pipeline.pipeline.config import Config

METHOD = "nhle-cwm"
MANIFEST = "manifest.json"
SCRATCH = ".work"  # inside staging; removed before release (e.g. the original's ONNX)
# sha256 of the manifest's canonical JSON without this key, added at publication:
# `pipeline verify` refuses a manifest edited after release (metrics, thresholds, digests).
MANIFEST_SEAL = "manifest_sha256"


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import sklearn
    import torchvision

    return {
        "pipeline": nhle_pipeline.pipeline.__version__,
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
        "pipeline_version": nhle_pipeline.pipeline.__version__,
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


def file_digests(folder: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, dict]:
    """sha256 and size of every file under ``folder`` (relative POSIX paths), scratch excluded."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in exclude and not rel.startswith(SCRATCH + "/"):
            out[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def write_json(path: Path, data: dict) -> None:
    """Write JSON durably: temp file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False, allow_nan=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def manifest_seal(manifest: dict) -> str:
    """sha256 of ``manifest`` as canonical JSON (sorted keys, no spaces), its own seal left out."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_SEAL}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()
    return hashlib.sha256(blob).hexdigest()


def seal_manifest_file(path: Path) -> None:
    """Add the seal to the manifest at ``path`` (if there is one), rewriting it durably."""
    if path.is_file():
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest[MANIFEST_SEAL] = manifest_seal(manifest)
        write_json(path, manifest)
