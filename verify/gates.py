"""Release gates: their thresholds, their policy, and their verdicts.

Every gate is evaluated, reported with its threshold, and a missing or
non-finite value fails (fail closed). Which gates apply is decided here too:
the evidence gates only when a threshold is set, ``cwm_in_graph`` only when
CWM ran, the parity and graph gates only where a PyTorch model was at hand."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nhle_pipeline.verify.formatting import format_gate_value
from nhle_pipeline.verify.measure import COPY_ATOL
from nhle_pipeline.verify.results import Result


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
        "must be ≥ this; needs `verify.evidence.relearn: true`. `pipeline verify` judges it where it "
        "recomputes relearning: from the release's model.safetensors and the original's `--source-weights`")
    require_representation: bool = Field(
        default=False,
        description="require the representation level of forgetting (the features, not only the outputs, "
        "within reach of a retrained reference: [Evidence](../explanation/evidence.md#levels-of-forgetting)); "
        "needs `verify.reference: retrain` in the run, and a signature in `pipeline verify`")


class GateResult(Result):
    """One gate's verdict, as the run, verify and the manifest record it."""

    name: str
    value: float | bool | None
    threshold: float | bool | None
    op: str  # "<=", ">=", "=="
    passed: bool
    description: str

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
    return GateResult(name=name, value=value, threshold=threshold, op=op, passed=bool(ok), description=description)


# Where a gate is judged: a run (the PyTorch model at hand), verify's re-check of an fp32
# release (the ONNX file and the manifest), and the check of a derived release (pipeline
# quantize, and verify of one).
RUN, RECHECK, DERIVED = "run", "recheck", "derived"
_EVERYWHERE = frozenset({RUN, RECHECK, DERIVED})
_FP32 = frozenset({RUN, RECHECK})


@dataclass(frozen=True)
class GateRule:
    """One gate: where it is judged, the value it reads from the metrics (and, for verify's own
    gates, the checker's ``facts``), how it compares, and whether it applies."""

    name: str
    where: frozenset[str]
    op: str
    value: Callable[[Mapping[str, Any]], Any]
    threshold: Callable[[GatesConfig, Mapping[str, Any]], Any]
    description: Callable[[Mapping[str, Any]], str]
    # (thresholds, metrics + facts, CWM applied) -> is the gate judged here
    applies: Callable[[GatesConfig, Mapping[str, Any], bool], bool] = lambda g, m, cwm: True


def _evidence(m: Mapping[str, Any], model: str) -> dict:
    return (m.get("evidence") or {}).get(model) or {}


def _ratio_d_relative(m: Mapping[str, Any]) -> float | None:
    unl, orig = _evidence(m, "unlearned").get("ratio_d"), _evidence(m, "original").get("ratio_d")
    return unl / orig if unl is not None and orig else None


def _said(text: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda m: text


def _nhle_stopped(m: Mapping[str, Any]) -> str | None:
    return (m.get("nhle") or {}).get("stopped")


def _level(m: Mapping[str, Any]) -> str | None:
    return (m.get("representation") or {}).get("level")


# Every gate, in the order the run, verify and the reports list them. A gate judged in several
# places is one rule; where the same name reads a different fact in another place (cwm_in_graph:
# the run's rows, verify's recomputed rows, a derivative's output spread) each is its own rule.
GATES: tuple[GateRule, ...] = (
    GateRule("acc_f", _EVERYWHERE, "<=", lambda m: m.get("acc_f"), lambda g, m: g.acc_f_max,
             lambda m: "forgotten classes' test accuracy, unlearned ONNX model" + (
                 f"; {m['forgotten_ties']} test image(s) take a forgotten class only by a tie with the highest "
                 "retained logit (a head clamped before the logits, e.g. by a ReLU: docs, Known limitations)"
                 if m.get("forgotten_ties") else "")),
    GateRule("acc_r_drop", _EVERYWHERE, ">=", lambda m: m.get("delta_acc_r"), lambda g, m: -g.acc_r_drop_max,
             _said("ΔAcc_R vs the original ONNX model (verify.gates.acc_r_drop_max)")),
    GateRule("evidence_copy", _FP32, "<=", lambda m: m.get("evidence_copy_max_abs"), lambda g, m: COPY_ATOL,
             _said("logits of the evidence's verification copy vs the shipped file, first test batch")),
    GateRule("ratio_d_relative", _EVERYWHERE, "<=", _ratio_d_relative, lambda g, m: g.ratio_d_max_relative,
             _said("Ratio_D of the unlearned model / the original's (verify.gates.ratio_d_max_relative)"),
             applies=lambda g, m, cwm: g.ratio_d_max_relative is not None),
    GateRule("probe_auc", _EVERYWHERE, "<=", lambda m: _evidence(m, "unlearned").get("probe_auc"),
             lambda g, m: g.probe_auc_max,
             _said("forgotten-vs-retained feature probe ROC AUC (verify.gates.probe_auc_max)"),
             applies=lambda g, m, cwm: g.probe_auc_max is not None),
    GateRule("mia_efficacy", _EVERYWHERE, ">=", lambda m: _evidence(m, "unlearned").get("mia_efficacy"),
             lambda g, m: g.mia_efficacy_min,
             _said("forget samples judged non-members (verify.gates.mia_efficacy_min)"),
             applies=lambda g, m, cwm: g.mia_efficacy_min is not None),
    # producer-side facts, like nhle_completed: the release check cannot redo them
    GateRule("relearn_steps_relative", frozenset({RUN}), ">=",
             lambda m: ((m.get("evidence") or {}).get("relearn") or {}).get("steps_relative"),
             lambda g, m: g.relearn_steps_min_relative,
             _said("steps to relearn the forgotten classes / the original's (verify.gates.relearn_steps_min_relative)"),
             applies=lambda g, m, cwm: g.relearn_steps_min_relative is not None),
    GateRule("relearn_steps_relative", frozenset({RECHECK}), ">=", lambda m: m.get("relearn_recomputed"),
             lambda g, m: g.relearn_steps_min_relative,
             _said("steps to relearn the forgotten classes / the original's, recomputed from model.safetensors and "
                   "--source-weights (verify.gates.relearn_steps_min_relative)"),
             applies=lambda g, m, cwm: g.relearn_steps_min_relative is not None and "relearn_recomputed" in m),
    GateRule("nhle_completed", frozenset({RUN}), "==",
             lambda m: None if _nhle_stopped(m) is None else _nhle_stopped(m) == "forgotten", lambda g, m: True,
             lambda m: f"NHLE ran and met its stop rule; stopped: {_nhle_stopped(m)} (verify.gates.nhle_completed)",
             applies=lambda g, m, cwm: g.nhle_completed),
    GateRule("representation_level", _EVERYWHERE, "==",
             lambda m: None if _level(m) is None else _level(m) == "representation", lambda g, m: True,
             lambda m: f"the features forgot too, not only the outputs; level: {_level(m)} "
                       "(verify.gates.require_representation)",
             applies=lambda g, m, cwm: g.require_representation),
    GateRule("output_masked", _FP32, "==", lambda m: m.get("output_masked"), lambda g, m: True,
             _said("every forgotten logit a constant of the graph (proved from its nodes) and one value over the "
                   "test split"),
             applies=lambda g, m, cwm: cwm),
    GateRule("agreement", frozenset({DERIVED}), ">=", lambda m: m.get("agreement"),
             lambda g, m: m["agreement_min"],
             _said("top-1 agreement with the fp32 parent release, test split (onnxruntime)")),
    # a derivative's masking is judged on its output: its weights are no longer float32 rows, and
    # quantized nodes are outside the graph proof
    GateRule("cwm_in_graph", frozenset({DERIVED}), "<=", lambda m: m.get("forgotten_logit_spread"),
             lambda g, m: 0.0,
             _said("forgotten classes' logits one constant over the test split (masked rows, as the derivative "
                   "computes them)"),
             applies=lambda g, m, cwm: cwm),
    GateRule("parity", frozenset({RUN}), "<=", lambda m: m.get("parity_max_abs"), lambda g, m: g.parity_atol,
             _said("max |ONNX - PyTorch| logits, finite entries")),
    GateRule("batch_independent", frozenset({RUN}), "<=", lambda m: m.get("batch_max_abs"),
             lambda g, m: g.parity_atol,
             _said("max |logits at batch 1 and 3 - the measuring pass's|, forgotten-class and other test images")),
    GateRule("graph_unchanged", frozenset({RUN}), "==", lambda m: m.get("graph_unchanged"), lambda g, m: True,
             _said("same ONNX nodes as an export of the original model")),
    GateRule("cwm_in_graph", frozenset({RUN}), "==", lambda m: m.get("cwm_in_graph"), lambda g, m: True,
             _said("forgotten rows masked in the head's Gemm initializers"),
             applies=lambda g, m, cwm: cwm),
    # verify's own: the rows recomputed against the bias the config and manifest give
    GateRule("cwm_in_graph", frozenset({RECHECK}), "==", lambda m: m.get("cwm_in_graph"), lambda g, m: True,
             lambda m: f"forgotten rows 0 and bias {m['bias_whence']} in the head's Gemm initializers (recomputed)",
             applies=lambda g, m, cwm: cwm and "bias_whence" in m),
    GateRule("cwm_in_graph", frozenset({RECHECK, DERIVED}), "==", lambda m: None, lambda g, m: True,
             _said("the release's config says cwm.mode none; the policy requires CWM"),
             applies=lambda g, m, cwm: not cwm and bool(m.get("require_cwm"))),
    GateRule("cwm_calibration", frozenset({RECHECK}), "<=", lambda m: m.get("cwm_calibration_gap"),
             lambda g, m: m["calibration_atol"],
             lambda m: f"|recorded - recomputed| calibrated bias (recomputed: {m['recalibrated'].bias:.6g} from the "
                       f"shipped model's retained logits on the {m['recalibrated'].samples} seeded calibration images)",
             applies=lambda g, m, cwm: m.get("recalibrated") is not None),
    GateRule("graph_unchanged", frozenset({RECHECK}), "==", lambda m: m.get("fresh_export_unchanged"),
             lambda g, m: True, _said("node for node the graph a fresh export of the architecture makes"),
             applies=lambda g, m, cwm: m.get("fresh_export_unchanged") is not None),
    GateRule("reproduces_manifest", frozenset({RECHECK, DERIVED}), "<=", lambda m: m.get("reproduction_drift"),
             lambda g, m: m["reproduce_atol"], lambda m: m["reproduced"],
             applies=lambda g, m, cwm: "reproduction_drift" in m),
)


def judge(where: str, metrics: Mapping[str, Any], gates: GatesConfig, *, cwm_applied: bool = True,
          facts: Mapping[str, Any] | None = None) -> list[GateResult]:
    """The verdict of every gate of ``GATES`` judged at ``where`` (RUN, RECHECK, DERIVED) that
    applies, in the table's order. ``metrics``: the run's or verify's metrics (acc_f, delta_acc_r,
    parity_max_abs, evidence, ...); ``facts``: what verify found besides them (``bias_whence``,
    ``recalibrated``, ``reproduction_drift``, ``agreement_min``, ...), read as if metrics."""
    m = {**metrics, **(facts or {})}
    return [gate_result(r.name, r.value(m), r.op, r.threshold(gates, m), r.description(m))
            for r in GATES if where in r.where and r.applies(gates, m, cwm_applied)]


def evaluate_gates(
    metrics: dict, gates: GatesConfig, *, with_parity: bool = True, cwm_applied: bool = True
) -> list[GateResult]:
    """The gates a run judges (``with_parity``: the PyTorch model was at hand), or those of
    verify's re-check that need nothing but the metrics (``with_parity=False``)."""
    return judge(RUN if with_parity else RECHECK, metrics, gates, cwm_applied=cwm_applied)
