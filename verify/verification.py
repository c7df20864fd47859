"""Assemble the verify stage's metrics from the measured models (one place for
the runner, the report and the benchmarks to read them from)."""

from __future__ import annotations

import numpy as np

from nhle_pipeline.verify.evidence import Evidence
from nhle_pipeline.verify.measure import Measurement
from nhle_pipeline.verify.metrics import parity_max_abs

# ONNX-vs-PyTorch parity is checked on the first rows of the evidence's test
# subset: enough to catch an export that computes something else, without a
# second full pass over the test split in PyTorch eager.
PARITY_MAX_SAMPLES = 1024
GAP_KEYS = ("acc_f", "acc_r", "ratio_d", "probe_auc", "mia_efficacy")


def flat_metrics(m: Measurement) -> dict[str, float]:
    """Acc_F, Acc_R and the evidence metrics of one measured model, as one flat dict."""
    return {"acc_f": m.accuracy.acc_f, "acc_r": m.accuracy.acc_r, **m.evidence.to_dict()}


def gap_to_reference(unlearned: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """|unlearned - reference| for each of ``GAP_KEYS``, and "mean": their mean over the
    finite ones (lower: closer to retraining; NaN when none is finite)."""
    gaps = {k: abs(unlearned[k] - reference[k]) for k in GAP_KEYS}
    finite = [v for v in gaps.values() if np.isfinite(v)]
    gaps["mean"] = float(np.mean(finite)) if finite else float("nan")
    return gaps


def evidence_block(before: Evidence, after: Evidence, reference: Measurement | None, unlearned: Measurement) -> dict:
    block = {"original": before.to_dict(), "unlearned": after.to_dict(), "reference": None, "gap_to_reference": None}
    if reference is not None:
        block["reference"] = reference.evidence.to_dict()
        block["gap_to_reference"] = gap_to_reference(flat_metrics(unlearned), flat_metrics(reference))
    return block


def verification_metrics(
    before: Measurement,
    after: Measurement,
    reference: Measurement | None,
    *,
    torch_logits: np.ndarray,
    graph_unchanged: bool,
    cwm_in_graph: bool | None,
    nhle: dict,
    cwm: dict | None = None,
    output_masked_proved: bool | None = None,
    forget: list[int] | None = None,
    batch_max_abs: float | None = None,
) -> dict:
    """Every number the gates and the reports use, as plain JSON-able values.

    ``torch_logits``: the PyTorch model's logits on the first rows of ``after.test_idx``
    (at most ``PARITY_MAX_SAMPLES``); ``output_masked_proved``: the graph proof of
    verify/output_masking.py for ``forget`` (None: CWM off); ``batch_max_abs``:
    verify/batch_independence.py's figure."""
    metrics = {
        "original": before.accuracy.to_dict(),
        "unlearned": after.accuracy.to_dict(),
        "reference": reference.accuracy.to_dict() if reference is not None else None,
        "acc_f": after.accuracy.acc_f,
        "delta_acc_r": after.accuracy.acc_r - before.accuracy.acc_r,
        "parity_max_abs": parity_max_abs(after.test_logits[: len(torch_logits)], torch_logits),
        "parity_samples": int(len(torch_logits)),
        "evidence_copy_max_abs": after.copy_max_abs,
        "graph_unchanged": graph_unchanged,
        "evidence": evidence_block(before.evidence, after.evidence, reference, after),
        "nhle": nhle,
        "cwm": cwm,
    }
    if cwm_in_graph is not None:
        metrics["cwm_in_graph"] = cwm_in_graph
    if output_masked_proved is not None:
        spread = forgotten_logit_spread(after.test_logits, forget or [])
        metrics["forgotten_logit_spread"] = spread
        metrics["output_masked"] = bool(output_masked_proved and spread == 0.0)
        metrics["forgotten_ties"] = forgotten_ties(after.test_logits, forget or [])
    if batch_max_abs is not None:
        metrics["batch_max_abs"] = batch_max_abs
    return metrics


def forgotten_ties(test_logits: np.ndarray, forget: list[int]) -> int:
    """Test images predicted as a forgotten class only by a tie: its logit equals the highest retained
    one, and argmax takes the lower class id. A head whose output is clamped before the logits (a
    ReLU after SqueezeNet's conv head) gives the masked logit 0, tied with every retained one at 0."""
    if len(test_logits) == 0 or not forget:
        return 0
    retained = [c for c in range(test_logits.shape[1]) if c not in forget]
    if not retained:
        return 0
    top_f, top_r = test_logits[:, forget].max(axis=1), test_logits[:, retained].max(axis=1)
    return int(((top_f == top_r) & np.isin(test_logits.argmax(axis=1), forget)).sum())


def forgotten_logit_spread(test_logits: np.ndarray, forget: list[int]) -> float:
    """max - min of each forgotten class's logit over the test images (the largest); 0 when masked,
    inf when a forgotten logit is not finite, NaN without images."""
    if len(test_logits) == 0 or not forget:
        return float("nan")
    cols = test_logits[:, forget].astype(np.float64)
    if not np.all(np.isfinite(cols)):
        return float("inf")
    return float((cols.max(axis=0) - cols.min(axis=0)).max())
