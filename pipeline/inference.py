"""PyTorch forward passes in batches: over an array, or streamed over a split."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """(N, C, H, W) float32 -> (N, classes) float32 logits, model in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[i : i + batch_size]).to(device)
        out.append(model(xb).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def torch_accuracy(model: nn.Module, split, batch_size: int, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` over a streamed split (``split.batches``), model in eval mode."""
    was_training = model.training
    model.eval()
    right = seen = 0
    for x, y in split.batches(None, batch_size):
        pred = model(torch.from_numpy(x).to(device)).argmax(dim=1).cpu().numpy()
        right += int((pred == y).sum())
        seen += len(y)
    model.train(was_training)
    return right / seen if seen else float("nan")
