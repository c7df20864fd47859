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
    """Gate results for ``metrics`` (keys: acc_f, delta_acc_r, parity_max_abs, graph_unchanged, cwm_in_graph)."""
    results = [
        _check("acc_f", metrics.get("acc_f"), "<=", gates.acc_f_max,
               "forgotten classes' test accuracy, unlearned ONNX model"),
        _check("acc_r_drop", metrics.get("delta_acc_r"), ">=", -gates.acc_r_drop_max,
               "ΔAcc_R vs the original ONNX model (verify.gates.acc_r_drop_max)"),
    ]
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
