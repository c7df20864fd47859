"""Which device PyTorch runs on: ``auto`` takes CUDA when PyTorch sees it."""

from __future__ import annotations

import torch

from nhle_pipeline.pipeline.errors import InputError


def resolve_device(setting: str) -> torch.device:
    if setting == "cpu":
        return torch.device("cpu")
    cuda = torch.cuda.is_available()
    if setting == "cuda" and not cuda:
        raise InputError("device: 'cuda' requested, but PyTorch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device("cuda" if cuda else "cpu")


def seed_everything(seed: int) -> None:
    """One seed drives torch (CPU and CUDA) and numpy draws made from it."""
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
