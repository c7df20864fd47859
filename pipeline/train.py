"""Supervised training: the original model (`pipeline train`) and the retrained reference."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nhle_pipeline.pipeline.config import TrainConfig
from nhle_pipeline.pipeline.data import Split

EpochCallback = Callable[[int, int, float], None]  # (epoch, epochs, mean loss)


def train_classifier(
    model: nn.Module,
    data: Split,
    cfg: TrainConfig,
    *,
    device: torch.device,
    seed: int,
    on_epoch: EpochCallback | None = None,
) -> nn.Module:
    """Train ``model`` on ``data`` with cross-entropy; shuffling is seeded by ``seed``."""
    model.to(device).train()
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(data)
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen).numpy()
        total, count = 0.0, 0
        for x, y in data.batches(order, cfg.batch_size):  # streamed: decoded per batch
            if len(y) < 2 and n > 1:  # a 1-sample batch breaks BatchNorm
                continue
            xb, yb = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        if on_epoch is not None:
            on_epoch(epoch + 1, cfg.epochs, total / max(count, 1))
    model.eval()
    return model


def retained_only(data: Split, forget_classes: list[int]) -> Split:
    """The split without the forgotten classes (the retrained reference's data)."""
    return data.subset(np.flatnonzero(~np.isin(data.y, forget_classes)))


def train_original(cfg, *, device: str | None = None, force: bool = False, on_epoch: EpochCallback | None = None):
    """`pipeline train`: train the config's architecture on its data and save model.weights.

    Returns ``(path, test_accuracy)``. Refuses to overwrite existing weights without ``force``.
    """
    from pathlib import Path

    from nhle_pipeline.pipeline.checkpoint import (
        SAFETENSORS_SUFFIX,
        check_weights_target,
        save_weights,
    )
    from nhle_pipeline.pipeline.data import eval_batch_size
    from nhle_pipeline.pipeline.device import resolve_device, seed_everything
    from nhle_pipeline.pipeline.errors import ModelError
    from nhle_pipeline.pipeline.inference import torch_accuracy
    from nhle_pipeline.pipeline.loading import build_configured_model, load_data

    if cfg.model.weights is None:
        raise ModelError("model.weights: required; 'pipeline train' writes the trained weights there")
    path = Path(cfg.model.weights)
    if path.suffix != SAFETENSORS_SUFFIX:
        raise ModelError(f"model.weights: '{path}' must end in {SAFETENSORS_SUFFIX} to be written by 'pipeline train'")
    if path.exists() and not force:
        raise ModelError(f"model.weights: '{path}' already exists; use --force to retrain and replace it")
    if path.exists() and path.is_dir():
        raise ModelError(f"model.weights: '{path}' is a folder")
    check_weights_target(path)
    dev = resolve_device(device or cfg.device)
    data = load_data(cfg)
    seed_everything(cfg.seed)
    model, _ = build_configured_model(cfg, data)
    train_classifier(model, data.train, cfg.train, device=dev, seed=cfg.seed, on_epoch=on_epoch)
    acc = torch_accuracy(model, data.test, eval_batch_size(cfg.data, data.input_shape), dev)
    save_weights(model.to("cpu"), path)
    return path, acc
