"""The retrained reference: the same recipe, trained without the forgotten classes
(training lives in pipeline/; verify/ only measures the exported file).

This is the gold standard an unlearned model is compared with
(``verify.reference: retrain``); it needs the full training split.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nhle_pipeline.export.onnx_export import export_onnx
from nhle_pipeline.pipeline.config import Config
from nhle_pipeline.pipeline.data import Dataset
from nhle_pipeline.pipeline.device import seed_everything
from nhle_pipeline.pipeline.loading import build_configured_model
from nhle_pipeline.pipeline.train import EpochCallback, retained_only, train_classifier


def retrain_reference(
    cfg: Config, data: Dataset, device: torch.device, out_path: Path, on_epoch: EpochCallback | None = None
) -> Path:
    """Train ``cfg.model.arch`` from scratch on retained training data; export it to ``out_path``."""
    seed_everything(cfg.seed)
    model, _ = build_configured_model(cfg, data)
    train_classifier(
        model, retained_only(data.train, cfg.forget_ids), cfg.train,
        device=device, seed=cfg.seed, on_epoch=on_epoch,
    )
    export_onnx(model, data.input_shape, out_path, opset=cfg.export.opset)
    return out_path
