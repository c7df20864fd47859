"""Release gates: their thresholds, their policy, and their verdicts.

Every gate is evaluated, reported with its threshold, and a missing or
non-finite value fails (fail closed). Which gates apply is decided here too:
the evidence gates only when a threshold is set, ``cwm_in_graph`` only when
CWM ran, the parity and graph gates only where a PyTorch model was at hand."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pydantic import BaseModel, ConfigDict, Field

from nhle_pipeline.verify.formatting import format_gate_value
from nhle_pipeline.verify.measure import COPY_ATOL


class GatesConfig(BaseModel):
    """The gates' thresholds (every gate is evaluated and reported; a missing or NaN value fails)."""

    # Strict like every config section (pipeline/config.py's _Section).

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    acc_f_max: float = Field(default=0.01, ge=0, le=1,
                             description="highest accepted Acc_F (top-1 accuracy on the forgotten classes' "
                             "test images) of the unlearned ONNX model")
    acc_r_drop_max: float = Field(default=0.035, ge=0, le=1,
                                  description="largest accepted drop of Acc_R against the original ONNX model "
                                  "(0.035, the paper's bound)")
    parity_atol: float = Field(default=1.0e-3, gt=0,
                               description="max \\|ONNX − PyTorch\\| on the finite logits (also the "
                               "`batch_independent` gate's tolerance)")
    nhle_completed: bool = Field(
        default=True,
        description="NHLE must have run and met its stop rule (not diverged, not out of steps, not "
        "disabled): CWM alone is output masking, not unlearning. false: allow it")
    # Optional evidence gates (null = off; docs/explanation/evidence.md).
    ratio_d_max_relative: float | None = Field(
        default=None, gt=0, json_schema_extra={"shown_default": "off"},
        description="Ratio_D(unlearned) / Ratio_D(original) must be ≤ this")
    probe_auc_max: float | None = Field(
        default=None, ge=0, le=1, json_schema_extra={"shown_default": "off"},
        description="the forgotten-vs-retained feature probe's ROC AUC must be ≤ this")
    mia_efficacy_min: float | None = Field(
        default=None, ge=0, le=1, json_schema_extra={"shown_default": "off"},
        description="MIA-efficacy on the forgotten classes' training samples must be ≥ this")
    relearn_steps_min_relative: float | None = Field(
        default=None, gt=0, json_schema_extra={"shown_default": "off"},
        description="steps to relearn the forgotten classes (summed over k = 1, 4, 16) ÷ the original's "
        "must be ≥ this; needs `verify.evidence.relearn: true`. `pipeline run` only: `pipeline verify` "
        "has the ONNX file, not trainable weights")
    require_representation: bool = Field(
        default=False,
        description="require the representation level of forgetting (the features, not only the outputs, "
        "within reach of a retrained reference: [Evidence](../explanation/evidence.md#levels-of-forgetting)); "
        "needs `verify.reference: retrain` in the run, and a signature in `pipeline verify`")


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
        return (f"[{mark}] {self.name}: {format_gate_value(self.value)} {self.op} "
                f"{format_gate_value(self.threshold)}  ({self.description})")


def gate_result(name: str, value, op: str, threshold, description: str) -> GateResult:
    """One gate's verdict: a missing or non-finite value fails (fail closed)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        ok = False
    elif op == "<=":
        ok = value <= threshold
    elif op == ">=":
        ok = value >= threshold
    else:
        ok = value == threshold
    return GateResult(name, value, threshold, op, bool(ok), description)


def evaluate_gates(
    metrics: dict, gates: GatesConfig, *, with_parity: bool = True, cwm_applied: bool = True
) -> list[GateResult]:
    """Gate results for ``metrics`` (keys: acc_f, delta_acc_r, parity_max_abs, batch_max_abs,
    graph_unchanged, cwm_in_graph, output_masked, and evidence.{original,unlearned} for the
    optional evidence gates).

    ``with_parity``: the PyTorch model was at hand (a run, not a re-check of a release);
    ``cwm_applied``: CWM ran (``unlearn.cwm.mode`` is not ``none``), so its rows must be in the graph."""
    results = [
        gate_result("acc_f", metrics.get("acc_f"), "<=", gates.acc_f_max,
               "forgotten classes' test accuracy, unlearned ONNX model"),
        gate_result("acc_r_drop", metrics.get("delta_acc_r"), ">=", -gates.acc_r_drop_max,
               "ΔAcc_R vs the original ONNX model (verify.gates.acc_r_drop_max)"),
    ]
    results.append(gate_result("evidence_copy", metrics.get("evidence_copy_max_abs"), "<=", COPY_ATOL,
                          "logits of the evidence's verification copy vs the shipped file, first test batch"))
    ev = metrics.get("evidence", {})
    unl, orig = ev.get("unlearned", {}), ev.get("original", {})
    if gates.ratio_d_max_relative is not None:
        rel = None
        if unl.get("ratio_d") is not None and orig.get("ratio_d"):
            rel = unl["ratio_d"] / orig["ratio_d"]
        results.append(gate_result("ratio_d_relative", rel, "<=", gates.ratio_d_max_relative,
                              "Ratio_D of the unlearned model / the original's (verify.gates.ratio_d_max_relative)"))
    if gates.probe_auc_max is not None:
        results.append(gate_result("probe_auc", unl.get("probe_auc"), "<=", gates.probe_auc_max,
                              "forgotten-vs-retained feature probe ROC AUC (verify.gates.probe_auc_max)"))
    if gates.mia_efficacy_min is not None:
        results.append(gate_result("mia_efficacy", unl.get("mia_efficacy"), ">=", gates.mia_efficacy_min,
                              "forget samples judged non-members (verify.gates.mia_efficacy_min)"))
    if with_parity and gates.relearn_steps_min_relative is not None:  # producer side, like nhle_completed
        results.append(gate_result("relearn_steps_relative", (ev.get("relearn") or {}).get("steps_relative"), ">=",
                                   gates.relearn_steps_min_relative,
                                   "steps to relearn the forgotten classes / the original's "
                                   "(verify.gates.relearn_steps_min_relative)"))
    if with_parity and gates.nhle_completed:  # a producer-side fact: the release check cannot redo it
        stopped = (metrics.get("nhle") or {}).get("stopped")
        results.append(gate_result("nhle_completed", None if stopped is None else stopped == "forgotten", "==", True,
                              f"NHLE ran and met its stop rule; stopped: {stopped} (verify.gates.nhle_completed)"))
    if gates.require_representation:
        level = (metrics.get("representation") or {}).get("level")
        results.append(gate_result("representation_level", None if level is None else level == "representation",
                                   "==", True, f"the features forgot too, not only the outputs; level: {level} "
                                   "(verify.gates.require_representation)"))
    if cwm_applied:
        results.append(gate_result("output_masked", metrics.get("output_masked"), "==", True,
                                   "every forgotten logit a constant of the graph (proved from its nodes) "
                                   "and one value over the test split"))
    if with_parity:
        results += [
            gate_result("parity", metrics.get("parity_max_abs"), "<=", gates.parity_atol,
                   "max |ONNX - PyTorch| logits, finite entries"),
            gate_result("batch_independent", metrics.get("batch_max_abs"), "<=", gates.parity_atol,
                   "max |logits at batch 1 and 3 - the measuring pass's|, forgotten-class and other test images"),
            gate_result("graph_unchanged", metrics.get("graph_unchanged"), "==", True,
                   "same ONNX nodes as an export of the original model"),
        ]
        if cwm_applied:
            results.append(gate_result("cwm_in_graph", metrics.get("cwm_in_graph"), "==", True,
                                  "forgotten rows masked in the head's Gemm initializers"))
    return results
