import pytest
from pydantic import ValidationError

from nhle_pipeline.verify.gates import GateResult, GatesConfig, evaluate_gates

OK = {"acc_f": 0.0, "delta_acc_r": -0.01, "parity_max_abs": 1e-5, "graph_unchanged": True, "cwm_in_graph": True,
      "output_masked": True, "batch_max_abs": 0.0, "evidence_copy_max_abs": 0.0, "nhle": {"stopped": "forgotten"}}
PARITY_GATES = {"parity", "batch_independent", "graph_unchanged", "cwm_in_graph", "nhle_completed"}
EVIDENCE_GATES = {"ratio_d_relative", "probe_auc", "mia_efficacy"}


def by_name(metrics, gates=None, **kw) -> dict[str, GateResult]:
    return {g.name: g for g in evaluate_gates(metrics, gates or GatesConfig(), **kw)}


def test_gates_pass_fail_and_fail_closed_on_missing_or_nan():
    assert all(g.passed for g in evaluate_gates(OK, GatesConfig()))
    bad = {**OK, "delta_acc_r": -0.05}
    results = by_name(bad)
    assert not results["acc_r_drop"].passed and results["acc_r_drop"].threshold == -0.035
    assert results["acc_f"].passed
    nan = {**OK, "acc_f": float("nan")}
    assert not by_name(nan)["acc_f"].passed
    missing = {k: v for k, v in OK.items() if k != "parity_max_abs"}
    assert not by_name(missing)["parity"].passed
    recheck = [g.name for g in evaluate_gates(OK, GatesConfig(), with_parity=False)]
    assert recheck[:2] == ["acc_f", "acc_r_drop"] and not PARITY_GATES & set(recheck)
    assert "output_masked" in recheck  # about the file: the re-check computes it too
    assert not by_name({**OK, "output_masked": None})["output_masked"].passed
    assert not by_name({**OK, "batch_max_abs": 0.002})["batch_independent"].passed


def test_thresholds_are_inclusive_and_infinity_fails():
    g = GatesConfig()
    edge = {**OK, "acc_f": g.acc_f_max, "delta_acc_r": -g.acc_r_drop_max, "parity_max_abs": g.parity_atol}
    assert all(r.passed for r in evaluate_gates(edge, g))
    assert not by_name({**OK, "parity_max_abs": float("inf")})["parity"].passed
    assert not by_name({**OK, "acc_f": 0.0101})["acc_f"].passed


def test_graph_and_cwm_gates_need_true_not_truthy():
    assert not by_name({**OK, "graph_unchanged": False})["graph_unchanged"].passed
    assert not by_name({**OK, "cwm_in_graph": None})["cwm_in_graph"].passed
    assert "cwm_in_graph" not in by_name({**OK, "cwm_in_graph": False}, cwm_applied=False)


def test_evidence_gates_only_when_a_threshold_is_set():
    ev = {"evidence": {"original": {"ratio_d": 4.0}, "unlearned": {"ratio_d": 1.0, "probe_auc": 0.6, "mia_efficacy": 0.9}}}
    assert not EVIDENCE_GATES & set(by_name({**OK, **ev}))
    gates = GatesConfig(ratio_d_max_relative=0.3, probe_auc_max=0.55, mia_efficacy_min=0.8)
    r = by_name({**OK, **ev}, gates)
    assert r["ratio_d_relative"].value == 0.25 and r["ratio_d_relative"].passed
    assert r["probe_auc"].value == 0.6 and not r["probe_auc"].passed
    assert r["mia_efficacy"].op == ">=" and r["mia_efficacy"].passed


@pytest.mark.parametrize(
    "evidence",
    [
        {},  # no evidence at all
        {"original": {"ratio_d": 0.0}, "unlearned": {"ratio_d": 1.0}},  # relative to 0: undefined
        {"original": {"ratio_d": 2.0}, "unlearned": {"ratio_d": None}},
        {"original": {"ratio_d": 2.0}, "unlearned": {"ratio_d": float("nan")}},
    ],
)
def test_evidence_gates_fail_closed_without_a_value(evidence):
    gates = GatesConfig(ratio_d_max_relative=10.0, probe_auc_max=1.0, mia_efficacy_min=0.0)
    r = by_name({**OK, "evidence": evidence}, gates)
    # the loosest thresholds, yet no value to hold them to: every evidence gate fails
    assert not r["ratio_d_relative"].passed
    assert not r["probe_auc"].passed and not r["mia_efficacy"].passed


def test_gate_line_shows_value_op_threshold_and_mark():
    r = by_name({**OK, "delta_acc_r": -0.05})
    assert r["acc_r_drop"].line().startswith("[✗] acc_r_drop: -0.05 >= -0.035  (")
    assert r["graph_unchanged"].line().startswith("[✓] graph_unchanged: true == true  (")
    assert by_name({k: v for k, v in OK.items() if k != "acc_f"})["acc_f"].line().startswith("[✗] acc_f: n/a <= 0.01")
    assert r["acc_f"].to_dict() == {
        "name": "acc_f", "value": 0.0, "threshold": 0.01, "op": "<=", "passed": True,
        "description": r["acc_f"].description,
    }


@pytest.mark.parametrize(
    "field, value", [("acc_f_max", 1.5), ("parity_atol", 0.0), ("probe_auc_max", -0.1), ("acc_f_max", "0.01")]
)
def test_gates_config_is_strict(field, value):
    with pytest.raises(ValidationError, match=field):
        GatesConfig(**{field: value})
    with pytest.raises(ValidationError, match="extra"):
        GatesConfig(acc_f=0.1)


@pytest.mark.parametrize("stopped", ["diverged", "max_steps", "disabled", None])
def test_masking_alone_is_not_unlearning(stopped):
    """NHLE that diverged, ran out of steps or did not run leaves CWM alone: the gate fails."""
    metrics = {**OK, "nhle": {"stopped": stopped}} if stopped else {k: v for k, v in OK.items() if k != "nhle"}
    gate = by_name(metrics)["nhle_completed"]
    assert not gate.passed and gate.threshold is True
    assert "nhle_completed" not in by_name(metrics, GatesConfig(nhle_completed=False))
    assert by_name(OK)["nhle_completed"].passed


@pytest.mark.parametrize("cwm, require_cwm", [(True, False), (False, True), (False, False)])
def test_the_gate_table_judges_each_gate_once_wherever_it_is_judged(cwm, require_cwm):
    """One table (verify/gates.py GATES) for the run, verify's re-check and a derivative: with every
    optional gate on and every fact verify gives, no name is judged twice in one place, and the
    places differ as documented (parity only in a run, agreement only for a derivative)."""
    from nhle_pipeline.pipeline.cwm import Calibration
    from nhle_pipeline.verify.gates import DERIVED, RECHECK, RUN, judge

    every = GatesConfig(ratio_d_max_relative=1.0, probe_auc_max=1.0, mia_efficacy_min=0.0,
                        relearn_steps_min_relative=1.0, require_representation=True)
    facts = {"bias_whence": "0 (mode zero)", "require_cwm": require_cwm, "agreement_min": 0.99,
             "recalibrated": Calibration(bias=-3.0, lowest_retained_logit=-2.0, highest_retained_logit=8.0, margin=1.0,
                                         samples=4), "calibration_atol": 3e-3, "fresh_export_unchanged": True,
             "reproduction_drift": 0.0, "reproduce_atol": 1e-4, "reproduced": "recomputed"}
    names = {where: [g.name for g in judge(where, OK, every, cwm_applied=cwm, facts=facts)]
             for where in (RUN, RECHECK, DERIVED)}
    for where, judged in names.items():
        assert len(judged) == len(set(judged)), (where, judged)
    assert {"parity", "batch_independent", "nhle_completed", "relearn_steps_relative"} <= set(names[RUN])
    assert not {"agreement", "reproduces_manifest", "cwm_calibration"} & set(names[RUN])
    assert not {"parity", "batch_independent", "evidence_copy"} & set(names[DERIVED])
    assert {"reproduces_manifest", "cwm_calibration"} <= set(names[RECHECK]) and "agreement" in names[DERIVED]
    assert ("cwm_in_graph" in names[RECHECK]) == (cwm or require_cwm)
    assert ("output_masked" in names[RECHECK]) == cwm and "output_masked" not in names[DERIVED]


def test_every_gate_of_the_table_is_documented():
    from pathlib import Path

    from nhle_pipeline.verify.gates import GATES

    page = (Path(__file__).resolve().parents[2] / "docs" / "reference" / "gates.md").read_text()
    rows = {line.split("|")[1].strip().split()[0].strip("`") for line in page.splitlines() if line.startswith("| `")}
    assert {r.name for r in GATES} <= rows, sorted({r.name for r in GATES} - rows)
