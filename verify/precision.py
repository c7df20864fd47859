"""Judging a reduced-precision derivative against its fp32 parent.

fp32 keeps its atol parity gate (ONNX vs PyTorch). An INT8 or float16 model
cannot meet an atol of 1e-3 and need not: it is judged by what a user sees,
top-1 agreement with the fp32 release on the test split (``AGREEMENT_MIN``,
default 0.99), and by the release's own accuracy gates (Acc_F, ΔAcc_R against
the fp32 original). CWM is checked on the output, since the head's weights are
no longer stored as float32 rows: a masked class's logit is its bias whatever
the input, so its logits must be one constant over the test images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nhle_pipeline.verify.gates import DERIVED, GateResult, GatesConfig, judge
from nhle_pipeline.verify.measure import ImageSource
from nhle_pipeline.verify.ort import open_session

AGREEMENT_MIN = 0.99  # top-1 agreement of a derivative with its fp32 parent, on the test split


@dataclass(frozen=True)
class Agreement:
    agreement: float  # fraction of test images whose top-1 class is the parent's
    max_abs_logit_diff: float  # over finite logits (inf where finiteness differs)
    samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def agreement(derived: str | Path, parent: str | Path, test: ImageSource, *, batch_size: int,
              device: str = "cpu") -> Agreement:
    """Top-1 agreement and max |Δlogit| of ``derived`` vs ``parent`` (both by onnxruntime) on ``test``."""
    from nhle_pipeline.verify.metrics import parity_max_abs

    a, _ = open_session(derived, device)
    b, _ = open_session(parent, device)
    name_a, name_b = a.get_inputs()[0].name, b.get_inputs()[0].name
    same = n = 0
    worst = 0.0
    for x in test.image_batches(None, batch_size):
        la = a.run(None, {name_a: x})[0].astype(np.float32)
        lb = b.run(None, {name_b: x})[0].astype(np.float32)
        same += int((la.argmax(1) == lb.argmax(1)).sum())
        n += len(x)
        worst = max(worst, parity_max_abs(la, lb))
    return Agreement(same / n if n else float("nan"), float(worst), n)


def derived_gates(metrics: dict, gates: GatesConfig, *, agreement_min: float = AGREEMENT_MIN,
                  cwm_applied: bool = True, facts: dict | None = None) -> list[GateResult]:
    """The gates of a derivative (``verify.gates.GATES`` judged at DERIVED): acc_f, acc_r_drop, the
    optional evidence gates, ``agreement`` with the fp32 parent and, under CWM, masked rows seen in
    the output. ``metrics``: as for ``evaluate_gates``, plus ``agreement`` and
    ``forgotten_logit_spread``; ``facts``: verify's (``reproduction_drift``, ``require_cwm``). The
    parity, graph and evidence-copy gates are the fp32 parent's: a derivative's graph is other
    nodes by design, and its features come from a copy whose logits differ by a quantization step."""
    return judge(DERIVED, metrics, gates, cwm_applied=cwm_applied, facts={"agreement_min": agreement_min, **(facts or {})})
