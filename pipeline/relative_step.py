"""A scale-free optimiser step for unlearning: each tensor moves by a fixed fraction of its own norm.

For every parameter tensor p with gradient g:

    p <- p - lr * max(||p||, floor) * g / ||g||

so ``lr`` is "how much of each weight tensor changes per step", whatever the
architecture. Plain SGD at one learning rate cannot fit both a small MLP and a
BatchNorm CNN: the CNN's convolutions (scale-invariant under BatchNorm, kept
small by weight decay) see huge relative steps, and a single NHLE step at
lr 0.01 costs CIFAR-10 retained accuracy 0.07 to 0.30 (benchmarks/results).
The same per-tensor trust ratio is what LARS uses for large-batch training.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

# Norm used for tensors that are (almost) zero, e.g. biases initialised at 0.
NORM_FLOOR = 1e-2


class RelativeStep(torch.optim.Optimizer):
    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch.optim.Optimizer's signature
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g_norm = p.grad.norm()
                if g_norm == 0:  # a NaN gradient is not skipped: NHLE's divergence guard sees it
                    continue
                scale = group["lr"] * torch.clamp(p.norm(), min=NORM_FLOOR) / g_norm
                p.sub_(p.grad * scale)
        return loss
