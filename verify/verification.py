"""Assemble the verify stage's metrics from the measured models (one place for
the runner, the report and the benchmarks to read them from)."""

from __future__ import annotations

import numpy as np

from verify.evidence import Evidence
from verify.measure import Measurement
from verify.metrics import parity_max_abs

GAP_KEYS = ("acc_f", "acc_r", "ratio_d", "probe_auc", "mia_efficacy")


def _flat(m: Measurement) -> dict[str, float]:
    return {"acc_f": m.accuracy.acc_f, "acc_r": m.accuracy.acc_r, **m.evidence.to_dict()}


def gap_to_reference(unlearned: Measurement, reference: Measurement) -> dict[str, float]:
    """|unlearned - retrained| per metric, and their mean (lower: closer to retraining)."""
    u, r = _flat(unlearned), _flat(reference)
    gaps = {k: abs(u[k] - r[k]) for k in GAP_KEYS}
    finite = [v for v in gaps.values() if np.isfinite(v)]
    gaps["mean"] = float(np.mean(finite)) if finite else float("nan")
    return gaps


def evidence_block(before: Evidence, after: Evidence, reference: Measurement | None, unlearned: Measurement) -> dict:
    block = {"original": before.to_dict(), "unlearned": after.to_dict(), "reference": None, "gap_to_reference": None}
    if reference is not None:
        block["reference"] = reference.evidence.to_dict()
        block["gap_to_reference"] = gap_to_reference(unlearned, reference)
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
) -> dict:
    """Every number the gates and the reports use, as plain JSON-able values."""
    metrics = {
        "original": before.accuracy.to_dict(),
        "unlearned": after.accuracy.to_dict(),
        "reference": reference.accuracy.to_dict() if reference is not None else None,
        "acc_f": after.accuracy.acc_f,
        "delta_acc_r": after.accuracy.acc_r - before.accuracy.acc_r,
        "parity_max_abs": parity_max_abs(after.test_logits, torch_logits),
        "graph_unchanged": graph_unchanged,
        "evidence": evidence_block(before.evidence, after.evidence, reference, after),
        "nhle": nhle,
    }
    if cwm_in_graph is not None:
        metrics["cwm_in_graph"] = cwm_in_graph
    return metrics
