"""Class Weight Masking (CWM), folded into the classifier head before export.

The forgotten classes' weight rows (and bias entries) of the final Linear are
edited in place, so the exported graph has exactly the original nodes (no
extra Mul) and the masked rows are visible in the Gemm initializers. With the
rows at 0, a forgotten class's logit is its bias, whatever the input.

Which bias:
- ``calibrated`` (default): a margin below the lowest retained logit the
  unlearned model gives on a seeded sample of training images. Low enough that
  a forgotten class is never top-1 on data like the training data, and close
  enough to the model's own logit range that the output keeps its precision
  when a server quantizes it: a fixed -10^4 makes static INT8 spend the
  output's 256 levels on that one value (digits release: Acc_R 0.98 -> 0.13).
- ``suppress``: a fixed ``suppress_bias`` (-10^4 by default).
- ``zero``: rows and bias 0 (the paper); the 0 still wins where every other
  logit is negative.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nhle_pipeline.pipeline.errors import ModelError
from nhle_pipeline.verify.results import Result

CALIBRATION_SAMPLES = 1024  # training images whose retained logits set the calibrated bias
MARGIN_FRACTION = 0.1  # the margin: this fraction of the retained logits' spread ...
MIN_MARGIN = 1.0  # ... and at least this much


class Calibration(Result):
    """How the calibrated bias was chosen (recorded in the manifest)."""

    bias: float
    lowest_retained_logit: float
    highest_retained_logit: float
    margin: float
    samples: int


def calibrated_bias(retained_logits: np.ndarray) -> Calibration:
    """The bias a margin below the lowest of ``retained_logits`` ((N, R): the unlearned model's
    logits of the retained classes on calibration images)."""
    finite = retained_logits[np.isfinite(retained_logits)]
    if finite.size == 0:
        raise ModelError("unlearn.cwm.mode: 'calibrated' found no finite retained logit; use 'suppress'")
    low, high = float(finite.min()), float(finite.max())
    margin = max(MIN_MARGIN, MARGIN_FRACTION * (high - low))
    return Calibration(bias=float(np.float32(low - margin)), lowest_retained_logit=low, highest_retained_logit=high,
                       margin=margin, samples=int(retained_logits.shape[0]))


def masked_bias(mode: str, suppress_bias: float, calibration) -> float | None:
    """The bias the forgotten rows get in ``mode`` (None: CWM off, or ``calibrated`` without a
    calibration). ``calibration``: a Calibration, or a manifest's record of one (anything with ``bias``)."""
    if mode == "none":
        return None
    if mode == "zero":
        return 0.0
    if mode == "calibrated":
        return None if calibration is None else float(calibration.bias)
    return suppress_bias


def check_heads_take_a_bias(model: nn.Module, heads: list[str], mode: str) -> None:
    """Modes that set the forgotten classes' bias need heads that have one: refused before any work."""
    if mode not in ("calibrated", "suppress"):
        return
    modules = dict(model.named_modules())
    bare = [h for h in heads if getattr(modules.get(h), "bias", None) is None]
    if bare:
        raise ModelError(f"model.head: {', '.join(repr(h) for h in bare)} has no bias, which unlearn.cwm.mode "
                         f"'{mode}' sets for the forgotten classes: use unlearn.cwm.mode 'zero' (their logits "
                         "are then 0, which still wins where every other logit is negative) or a head with a bias")


@torch.no_grad()
def apply_cwm(head: nn.Linear, classes: list[int], mode: str, suppress_bias: float) -> None:
    """Mask ``classes`` in ``head``: ``zero`` rows+bias, or ``suppress`` (rows 0, bias ``suppress_bias``;
    ``calibrated`` passes its calibrated bias here)."""
    if mode == "none":
        return
    idx = torch.as_tensor(classes, dtype=torch.long, device=head.weight.device)
    head.weight[idx] = 0.0  # (C, D): forgotten rows no longer see the features
    if mode == "zero":
        if head.bias is not None:
            head.bias[idx] = 0.0
    elif mode in ("suppress", "calibrated"):
        if head.bias is None:
            raise ModelError(f"unlearn.cwm.mode: '{mode}' needs a head with a bias; use 'zero'")
        head.bias[idx] = suppress_bias
    else:
        raise ValueError(f"unknown CWM mode '{mode}'")
