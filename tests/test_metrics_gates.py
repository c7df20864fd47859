import math

import numpy as np

from nhle_pipeline.pipeline.config import GatesConfig
from nhle_pipeline.verify.gates import evaluate_gates
from nhle_pipeline.verify.metrics import accuracy, parity_max_abs


def test_accuracy_split_by_forgotten_classes():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    logits = np.eye(3, dtype=np.float32)[pred]
    a = accuracy(logits, y, [0], 3)
    assert a.acc_f == 0.5  # one of two class-0 samples
    assert a.acc_r == 0.75  # three of four retained samples
    assert a.per_class == [0.5, 1.0, 0.5]
    assert (a.n_forget, a.n_retain) == (2, 4)
    assert math.isnan(accuracy(logits, y, [0], 4).per_class[3])


def test_parity_ignores_equal_non_finite_entries_only():
    a = np.array([[1.0, -np.inf], [2.0, 3.0]], np.float32)
    b = np.array([[1.5, -np.inf], [2.0, 2.9]], np.float32)
    assert abs(parity_max_abs(a, b) - 0.5) < 1e-6
    c = b.copy()
    c[0, 1] = 0.0
    assert parity_max_abs(a, c) == float("inf")


def test_gates_pass_fail_and_fail_closed_on_missing_or_nan():
    ok = {"acc_f": 0.0, "delta_acc_r": -0.01, "parity_max_abs": 1e-5, "graph_unchanged": True, "cwm_in_graph": True}
    assert all(g.passed for g in evaluate_gates(ok, GatesConfig()))
    bad = {**ok, "delta_acc_r": -0.05}
    results = {g.name: g for g in evaluate_gates(bad, GatesConfig())}
    assert not results["acc_r_drop"].passed and results["acc_r_drop"].threshold == -0.035
    assert results["acc_f"].passed
    nan = {**ok, "acc_f": float("nan")}
    assert not {g.name: g for g in evaluate_gates(nan, GatesConfig())}["acc_f"].passed
    missing = {k: v for k, v in ok.items() if k != "parity_max_abs"}
    assert not {g.name: g for g in evaluate_gates(missing, GatesConfig())}["parity"].passed
    assert [g.name for g in evaluate_gates(ok, GatesConfig(), with_parity=False)] == ["acc_f", "acc_r_drop"]
