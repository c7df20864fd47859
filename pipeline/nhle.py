"""Negative-Hot Label Encoding (NHLE) fine-tuning on the forget samples.

For C classes and a sample of forgotten class c the target is (Eq. 4)

    y~_j = -1 if j == c, else 1 / (C - 1)

so its entries sum to 0. Two losses are offered:

- ``paper``: L = logsumexp(z) - <y~, z>, whose logit gradient is y - y~
  (Eq. 2, y = softmax(z)): the class-c row is pushed away from the features
  with magnitude ~2, the other rows nudged by ~eps/(C-1) (Eq. 5).
- ``soft-ce``: PyTorch's soft-target cross-entropy with y~. Because sum(y~) = 0
  it reduces to -<y~, z>, gradient -y~: a different, linear loss.

Both are unbounded below, so fine-tuning stops as soon as the forget samples
are no longer predicted as their class (or at ``max_steps``, or when the loss
stops being finite, in which case the last finite weights are kept).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.config import NHLEConfig

StepCallback = Callable[[int, int, float, float], None]  # (step, max_steps, loss, forget acc)
LossFn = Callable[[torch.Tensor], torch.Tensor]  # (N, C) logits -> scalar loss


@dataclass
class NHLEResult:
    steps: int
    stopped: str  # "forgotten" | "max_steps" | "diverged" | "disabled"
    forget_acc_start: float  # fraction of forget samples predicted as their class
    forget_acc_end: float
    losses: list[float] = field(default_factory=list)


def nhle_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) class ids -> (N, C) negative-hot targets of Eq. 4."""
    t = torch.full((labels.shape[0], num_classes), 1.0 / (num_classes - 1), device=labels.device)
    t[torch.arange(labels.shape[0], device=labels.device), labels] = -1.0
    return t


def nhle_loss(logits: torch.Tensor, targets: torch.Tensor, variant: str) -> torch.Tensor:
    """Mean loss over the batch; see the module docstring for the two variants."""
    linear = (targets * logits).sum(dim=1)  # (N,) <y~, z>
    if variant == "paper":
        return (torch.logsumexp(logits, dim=1) - linear).mean()
    if variant == "soft-ce":
        return (-linear).mean()  # == F.cross_entropy(logits, targets) since sum(y~) == 0
    raise ValueError(f"unknown NHLE variant '{variant}'")


def _set_mode(model: nn.Module, freeze_batchnorm: bool) -> None:
    # Eval mode freezes BatchNorm running statistics and disables dropout; a
    # handful of forget samples would otherwise overwrite the statistics.
    model.train(not freeze_batchnorm)


def nhle_finetune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    cfg: NHLEConfig,
    *,
    on_step: StepCallback | None = None,
    loss_fn: LossFn | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> NHLEResult:
    """Fine-tune ``model`` in place on forget samples ``x`` (N,C,H,W), labels ``y`` (N,).

    ``loss_fn`` and ``optimizer`` replace NHLE's loss and SGD while keeping the
    loop (step cap, clipping, stopping rule, divergence guard): the benchmarks'
    simple-label ablation and gradient ascent run through here.
    """
    if not cfg.enabled:
        return NHLEResult(0, "disabled", float("nan"), float("nan"))
    if loss_fn is None:
        targets = nhle_targets(y, num_classes)
        loss_fn = lambda z: nhle_loss(z, targets, cfg.variant)  # noqa: E731
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    _set_mode(model, cfg.freeze_batchnorm)
    losses: list[float] = []
    start_acc = float("nan")
    last_good = copy.deepcopy(model.state_dict())
    step = 0
    stopped = "max_steps"
    while True:
        logits = model(x)  # (N, C)
        acc = float((logits.argmax(dim=1) == y).float().mean())
        if step == 0:
            start_acc = acc
        if not torch.isfinite(logits).all():
            model.load_state_dict(last_good)
            stopped = "diverged"
            break
        last_good = copy.deepcopy(model.state_dict())
        if step >= 1 and acc <= cfg.stop_forget_acc:
            stopped = "forgotten"
            break
        if step >= cfg.max_steps:
            break
        loss = loss_fn(logits)
        if not torch.isfinite(loss):
            stopped = "diverged"
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, cfg.max_steps, losses[-1], acc)
    model.eval()
    with torch.no_grad():
        end_acc = float((model(x).argmax(dim=1) == y).float().mean())
    return NHLEResult(step, stopped, start_acc, end_acc, losses)
