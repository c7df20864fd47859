"""Negative-Hot Label Encoding (NHLE) fine-tuning on the forget samples.

For C classes and a sample of forgotten class c the target is (Eq. 4)

    y~_j = -1 if j == c, else 1 / (C - 1)

so its entries sum to 0. Three variants (``unlearn.nhle.variant``):

- ``paper``: L = logsumexp(z) - <y~, z>, whose logit gradient is y - y~
  (Eq. 2, y = softmax(z)): the class-c row is pushed away from the features
  with magnitude ~2, the other rows nudged by ~eps/(C-1) (Eq. 5).
- ``soft-ce``: PyTorch's soft-target cross-entropy with y~. Because sum(y~) = 0
  it reduces to -<y~, z>, gradient -y~: a different, linear loss.
- ``anchored`` (default): soft-ce plus ``anchor`` x the mean squared change of
  the retained classes' logits on the same forget samples, against the
  original model's. The forgotten logit is pushed down while what the model
  says about the other classes is held in place; only forget samples are used,
  unless ``retained_per_class`` > 0 adds a few retained training samples to
  the anchor (an opt-in mode, recorded as such).

The optimiser is SGD or :class:`~pipeline.relative_step.RelativeStep`. The
losses are unbounded below, so fine-tuning stops at the first step where every
configured rule holds: the forget accuracy is at most ``stop_forget_acc``
and/or every forget sample's forgotten logit is ``stop_margin`` (or
``stop_margin_relative`` x the original's mean lead) below its best retained
logit; or at ``max_steps``; or when the loss stops being finite, in
which case the last finite weights are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nhle_pipeline.pipeline.config import NHLEConfig
from nhle_pipeline.pipeline.relative_step import RelativeStep

StepCallback = Callable[[int, int, float, float], None]  # (step, max_steps, loss, forget acc)
LossFn = Callable[[torch.Tensor], torch.Tensor]  # (N, C) logits -> scalar loss


@dataclass
class NHLEResult:
    steps: int
    stopped: str  # "forgotten" | "max_steps" | "diverged" | "disabled"
    forget_acc_start: float  # fraction of forget samples predicted as their class
    forget_acc_end: float
    settings: dict[str, Any] = field(default_factory=dict)  # the resolved NHLEConfig that ran
    setup_seconds: float = 0.0  # before the first step: the original's logits, the optimiser
    seconds_per_step: float = 0.0  # the loop's wall time per step (a forward, the backward, the update)


def nhle_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) class ids -> (N, C) negative-hot targets of Eq. 4."""
    t = torch.full((labels.shape[0], num_classes), 1.0 / (num_classes - 1), device=labels.device)
    t[torch.arange(labels.shape[0], device=labels.device), labels] = -1.0
    return t


def nhle_loss(logits: torch.Tensor, targets: torch.Tensor, variant: str) -> torch.Tensor:
    """Mean push loss over the batch; ``anchored`` pushes with ``soft-ce`` (module docstring)."""
    linear = (targets * logits).sum(dim=1)  # (N,) <y~, z>
    if variant == "paper":
        return (torch.logsumexp(logits, dim=1) - linear).mean()
    if variant in ("soft-ce", "anchored"):
        return (-linear).mean()  # == F.cross_entropy(logits, targets) since sum(y~) == 0
    raise ValueError(f"unknown NHLE variant '{variant}'")


def retained_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class ids not among ``labels`` (the forget samples' classes), ascending."""
    forgotten = set(labels.unique().tolist())
    return torch.tensor([c for c in range(num_classes) if c not in forgotten], device=labels.device)


def anchor_loss(logits: torch.Tensor, original_logits: torch.Tensor, retained: torch.Tensor) -> torch.Tensor:
    """Mean squared change of the retained classes' logits, (N, C) x (N, C) -> scalar."""
    return (logits[:, retained] - original_logits[:, retained]).pow(2).mean()


def logit_margin(logits: torch.Tensor, labels: torch.Tensor, retained: torch.Tensor) -> torch.Tensor:
    """(N,) best retained logit minus the sample's own (forgotten) logit."""
    own = logits.gather(1, labels[:, None])[:, 0]
    return logits[:, retained].max(dim=1).values - own


def micro_batches(n: int, size: int) -> list[slice]:
    """``range(n)`` as slices of ``size``; a last slice of one sample joins the one before it
    (with ``freeze_batchnorm: false`` BatchNorm normalises each micro-batch, and one sample
    cannot be normalised)."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, [*starts[1:], n], strict=True)]


def _set_mode(model: nn.Module, freeze_batchnorm: bool) -> None:
    # Eval mode freezes BatchNorm running statistics and disables dropout; a
    # handful of forget samples would otherwise overwrite the statistics.
    model.train(not freeze_batchnorm)


def original_lead(logits: torch.Tensor, labels: torch.Tensor, retained: torch.Tensor) -> float:
    """Mean over samples of how far the own logit tops the best retained one (negative leads count
    as 0), at least 1: the unit of ``stop_margin_relative``."""
    return max(float((-logit_margin(logits, labels, retained)).clamp(min=0).mean()), 1.0)


def required_margin(s: dict[str, Any], lead: float) -> float | None:
    """The logit margin the stopping rule asks for: the larger of ``stop_margin`` and
    ``stop_margin_relative`` x ``lead``; None when neither is set."""
    margins = [] if s["stop_margin"] is None else [s["stop_margin"]]
    if s["stop_margin_relative"] is not None:
        margins.append(s["stop_margin_relative"] * lead)
    return max(margins) if margins else None


def _forgotten(logits: torch.Tensor, y: torch.Tensor, retained: torch.Tensor, max_acc: float | None,
               margin: float | None) -> bool:
    """Every configured stopping rule holds (no rule set: never; ``max_steps`` ends the loop)."""
    rules = []
    if max_acc is not None:
        rules.append(float((logits.argmax(dim=1) == y).float().mean()) <= max_acc)
    if margin is not None:
        rules.append(bool((logit_margin(logits, y, retained) >= margin).all()))
    return bool(rules) and all(rules)


MICRO_BATCH_PIXELS = 64 * 64 * 64  # a micro-batch holds about this many pixels per channel


def micro_batch_for(input_shape: tuple[int, int, int]) -> int:
    """NHLE's micro-batch for images of ``(C, H, W)``: a power of two with about
    ``MICRO_BATCH_PIXELS`` pixels (64 at 32 px: 16 forget samples in one go; 4 at 224 px)."""
    _, h, w = input_shape
    fit = max(1, MICRO_BATCH_PIXELS // max(1, h * w))
    return 2 ** (fit.bit_length() - 1)


def make_optimizer(params: list[nn.Parameter], s: dict[str, Any]) -> torch.optim.Optimizer:
    if s["optimizer"] == "relative":
        return RelativeStep(params, lr=s["lr"])
    return torch.optim.SGD(params, lr=s["lr"], momentum=s["momentum"])


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
    retained_x: torch.Tensor | None = None,
    micro_batch: int | None = None,
) -> NHLEResult:
    """Fine-tune ``model`` in place on forget samples ``x`` (N,C,H,W), labels ``y`` (N,).

    ``retained_x`` (M,C,H,W), the opt-in retained samples
    (``retained_per_class``), join the anchor: their retained logits are held
    to the original's too; they are never pushed.

    ``loss_fn`` and ``optimizer`` replace NHLE's loss and optimiser while keeping
    the loop (step cap, clipping, stopping rules, divergence guard): the
    benchmarks' simple-label ablation and gradient ascent run through here.

    ``micro_batch``: run each step's forward and backward over the forget
    samples, and over the retained ones, this many at a time, summing the
    gradients (NHLE's loss and the anchor are means over samples and BatchNorm
    is frozen, so the step is the same): memory then grows with the
    micro-batch, not with the samples (224-px models; the retained mode reads
    ``retained_per_class`` samples of every retained class).
    """
    t_start = time.perf_counter()
    s = cfg.resolved()
    if not cfg.enabled:
        return NHLEResult(0, "disabled", float("nan"), float("nan"), settings=s)
    retained = retained_classes(y, num_classes)
    _set_mode(model, cfg.freeze_batchnorm)
    with torch.no_grad():
        original = model(x)
    margin = required_margin(s, original_lead(original, y, retained))
    n_retained = 0 if retained_x is None else len(retained_x)
    chunked = loss_fn is None and micro_batch is not None and 0 < micro_batch < max(len(x), n_retained)
    if loss_fn is None:
        targets = nhle_targets(y, num_classes)
        with torch.no_grad():
            original_r = None
            if n_retained:
                step_r = micro_batch if chunked else n_retained
                original_r = torch.cat([model(retained_x[part]) for part in micro_batches(n_retained, step_r)])
        anchor = s["anchor"]

        def loss_fn(z: torch.Tensor) -> torch.Tensor:
            loss = nhle_loss(z, targets, cfg.variant)
            if anchor > 0:
                loss = loss + anchor * anchor_loss(z, original, retained)
                if original_r is not None:
                    loss = loss + anchor * anchor_loss(model(retained_x), original_r, retained)
            return loss

        def forward_backward() -> tuple[torch.Tensor, torch.Tensor]:
            """Logits (detached) and the loss of one step, its gradient accumulated micro-batch by micro-batch."""
            total, outs = torch.zeros((), device=x.device), []
            for part in micro_batches(len(x), micro_batch):
                z = model(x[part])
                share = len(z) / len(x)
                loss = nhle_loss(z, targets[part], cfg.variant) * share
                if anchor > 0:
                    loss = loss + anchor * anchor_loss(z, original[part], retained) * share
                loss.backward()
                total, outs = total + loss.detach(), [*outs, z.detach()]
            if anchor > 0 and original_r is not None:
                for part in micro_batches(n_retained, micro_batch):
                    z_r = model(retained_x[part])
                    loss = anchor * anchor_loss(z_r, original_r[part], retained) * (len(z_r) / n_retained)
                    loss.backward()
                    total = total + loss.detach()
            return torch.cat(outs), total

    params = list(model.parameters())
    opt = optimizer or make_optimizer(params, s)
    t_loop = time.perf_counter()
    clip = s["grad_clip"] if s["optimizer"] == "sgd" else None
    start_acc = float("nan")
    state = model.state_dict()  # live references to every parameter and buffer
    last_good = {k: v.detach().clone() for k, v in state.items()}
    step = 0
    stopped = "max_steps"
    while True:
        if chunked:
            opt.zero_grad(set_to_none=True)
            logits, loss = forward_backward()  # (N, C) detached; gradients already in .grad
        else:
            logits = model(x)  # (N, C)
        acc = float((logits.argmax(dim=1) == y).float().mean())
        if step == 0:
            start_acc = acc
        if not torch.isfinite(logits).all():
            model.load_state_dict(last_good)
            stopped = "diverged"
            break
        with torch.no_grad():  # in place: a deepcopy per step was a third of the loop's time
            for k, v in state.items():
                last_good[k].copy_(v)
        if step >= 1 and _forgotten(logits, y, retained, s["stop_forget_acc"], margin):
            stopped = "forgotten"
            break
        if step >= s["max_steps"]:
            break
        if not chunked:
            loss = loss_fn(logits)
        if not torch.isfinite(loss):
            stopped = "diverged"
            break
        if not chunked:
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        step += 1
        if on_step is not None:
            on_step(step, s["max_steps"], float(loss.detach()), acc)
    loop_s = time.perf_counter() - t_loop
    model.eval()
    with torch.no_grad():
        end_acc = float((model(x).argmax(dim=1) == y).float().mean())
    return NHLEResult(step, stopped, start_acc, end_acc, settings=s, setup_seconds=round(t_loop - t_start, 4),
                      seconds_per_step=round(loop_s / max(step, 1), 5))
