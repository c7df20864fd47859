"""Class Weight Masking (CWM), folded into the classifier head before export.

The forgotten classes' weight rows (and bias entries) of the final Linear are
edited in place, so the exported graph has exactly the original nodes (no
extra Mul) and the masked rows are visible in the Gemm initializers.
"""

from __future__ import annotations

import torch
from torch import nn

from nhle_pipeline.pipeline.errors import ModelError


@torch.no_grad()
def apply_cwm(head: nn.Linear, classes: list[int], mode: str, suppress_bias: float) -> None:
    """Mask ``classes`` in ``head``: ``zero`` rows+bias, or ``suppress`` (rows 0, bias very negative)."""
    if mode == "none":
        return
    idx = torch.as_tensor(classes, dtype=torch.long, device=head.weight.device)
    head.weight[idx] = 0.0  # (C, D): forgotten rows no longer see the features
    if mode == "zero":
        if head.bias is not None:
            head.bias[idx] = 0.0
    elif mode == "suppress":
        if head.bias is None:
            raise ModelError("unlearn.cwm.mode: 'suppress' needs a head with a bias; use 'zero'")
        head.bias[idx] = suppress_bias
    else:
        raise ValueError(f"unknown CWM mode '{mode}'")
