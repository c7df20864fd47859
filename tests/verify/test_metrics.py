import math

import numpy as np

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


def test_accuracy_with_several_forgotten_classes_and_none_present():
    y = np.array([0, 1, 2, 3])
    logits = np.eye(4, dtype=np.float32)[[0, 2, 2, 3]]  # sample 1 misclassified
    a = accuracy(logits, y, [0, 1], 4)
    assert (a.acc_f, a.acc_r) == (0.5, 1.0)
    absent = accuracy(logits, y, [9], 4)  # no test sample of the forgotten class
    assert math.isnan(absent.acc_f) and absent.acc_r == 0.75 and absent.n_forget == 0
    assert a.to_dict()["per_class"] == [1.0, 0.0, 1.0, 1.0]


def test_top1_counts_forgotten_classes_too():
    """A retained sample predicted as a forgotten class is wrong (argmax over all classes)."""
    y = np.array([1, 1])
    logits = np.array([[5.0, 1.0], [0.0, 1.0]], np.float32)
    assert accuracy(logits, y, [0], 2).acc_r == 0.5


def test_parity_shape_mismatch_and_all_non_finite():
    a = np.zeros((2, 3), np.float32)
    assert parity_max_abs(a, np.zeros((3, 2), np.float32)) == float("inf")
    inf = np.full((2, 2), -np.inf, np.float32)
    assert parity_max_abs(inf, inf.copy()) == 0.0
    nan = np.full((1, 2), np.nan, np.float32)
    assert parity_max_abs(nan, np.zeros((1, 2), np.float32)) == float("inf")
