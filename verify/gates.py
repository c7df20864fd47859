"""Release gates: every gate is evaluated, reported with its threshold, and a
missing or non-finite value fails (fail closed)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pipeline.config import GatesConfig


@dataclass(frozen=True)
class GateResult:
    name: str
    value: float | bool | None
    threshold: float | bool | None
    op: str  # "<=", ">=", "=="
    passed: bool
    description: str

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        mark = "✓" if self.passed else "✗"
        return f"[{mark}] {self.name}: {_fmt(self.value)} {self.op} {_fmt(self.threshold)}  ({self.description})"


def _fmt(v: float | bool | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v).lower()
    return f"{v:.4g}"


def _check(name: str, value, op: str, threshold, description: str) -> GateResult:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        ok = False
    elif op == "<=":
        ok = value <= threshold
    elif op == ">=":
        ok = value >= threshold
    else:
        ok = value == threshold
    return GateResult(name, value, threshold, op, bool(ok), description)


def evaluate_gates(metrics: dict, gates: GatesConfig, *, with_parity: bool = True) -> list[GateResult]:
    """Gate results for ``metrics`` (keys: acc_f, delta_acc_r, parity_max_abs, graph_unchanged,
    cwm_in_graph, and evidence.{original,unlearned} for the optional evidence gates)."""
    results = [
        _check("acc_f", metrics.get("acc_f"), "<=", gates.acc_f_max,
               "forgotten classes' test accuracy, unlearned ONNX model"),
        _check("acc_r_drop", metrics.get("delta_acc_r"), ">=", -gates.acc_r_drop_max,
               "ΔAcc_R vs the original ONNX model (verify.gates.acc_r_drop_max)"),
    ]
    ev = metrics.get("evidence", {})
    unl, orig = ev.get("unlearned", {}), ev.get("original", {})
    if gates.ratio_d_max_relative is not None:
        rel = None
        if unl.get("ratio_d") is not None and orig.get("ratio_d"):
            rel = unl["ratio_d"] / orig["ratio_d"]
        results.append(_check("ratio_d_relative", rel, "<=", gates.ratio_d_max_relative,
                              "Ratio_D of the unlearned model / the original's (verify.gates.ratio_d_max_relative)"))
    if gates.probe_auc_max is not None:
        results.append(_check("probe_auc", unl.get("probe_auc"), "<=", gates.probe_auc_max,
                              "forgotten-vs-retained feature probe ROC AUC (verify.gates.probe_auc_max)"))
    if gates.mia_efficacy_min is not None:
        results.append(_check("mia_efficacy", unl.get("mia_efficacy"), ">=", gates.mia_efficacy_min,
                              "forget samples judged non-members (verify.gates.mia_efficacy_min)"))
    if with_parity:
        results += [
            _check("parity", metrics.get("parity_max_abs"), "<=", gates.parity_atol,
                   "max |ONNX - PyTorch| logits, finite entries"),
            _check("graph_unchanged", metrics.get("graph_unchanged"), "==", True,
                   "same ONNX nodes as an export of the original model"),
            _check("cwm_in_graph", metrics.get("cwm_in_graph"), "==", True,
                   "forgotten rows masked in the head's Gemm initializers"),
        ]
    return results
