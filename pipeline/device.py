"""Which device PyTorch runs on: ``auto`` takes CUDA when PyTorch sees it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def exact_fp32() -> Iterator[None]:
    """fp32 matrix products and convolutions in full fp32 on CUDA for the duration, not TF32
    (PyTorch's default for cuDNN convolutions on Ampere and later: inputs rounded to a 10-bit
    mantissa). For values that `pipeline verify` recomputes in fp32 with onnxruntime, such
    as the calibrated CWM bias. No effect on the CPU."""
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv
