"""The metrics, defined once and used by the gates, the report and the benchmarks.

- Acc_F: top-1 accuracy on test samples of the forgotten classes (low is good).
- Acc_R: top-1 accuracy on test samples of the retained classes.
- ΔAcc_R: Acc_R(unlearned) - Acc_R(original), same data, same runtime.
- per-class accuracy, and ONNX-vs-PyTorch parity (max |diff| on finite logits).
Top-1 is the argmax over all classes, the forgotten ones included.
"""

from __future__ import annotations

import numpy as np

from nhle_pipeline.verify.results import Result


class Accuracy(Result):
    """Top-1 accuracy on the forgotten and the retained classes' test images, and per class."""

    acc_f: float
    acc_r: float
    per_class: list[float]  # accuracy of each class's test samples (nan if none)
    n_forget: int
    n_retain: int


def accuracy(logits: np.ndarray, y: np.ndarray, forget_classes: list[int], num_classes: int) -> Accuracy:
    """Acc_F, Acc_R and per-class accuracy from (N, C) logits and (N,) labels."""
    pred = logits.argmax(axis=1)
    correct = pred == y
    forget = np.isin(y, forget_classes)
    per_class = [float(correct[y == c].mean()) if np.any(y == c) else float("nan") for c in range(num_classes)]
    return Accuracy(
        acc_f=float(correct[forget].mean()) if forget.any() else float("nan"),
        acc_r=float(correct[~forget].mean()) if (~forget).any() else float("nan"),
        per_class=per_class,
        n_forget=int(forget.sum()),
        n_retain=int((~forget).sum()),
    )


def accuracy_from_counts(
    correct: np.ndarray, total: np.ndarray, forget_classes: list[int], num_classes: int
) -> Accuracy:
    """The same as ``accuracy``, from per-class counts of right predictions and of samples
    (what a streamed pass over a split accumulates)."""
    correct = np.asarray(correct, dtype=np.int64)[:num_classes]
    total = np.asarray(total, dtype=np.int64)[:num_classes]
    is_forget = np.isin(np.arange(num_classes), forget_classes)
    per_class = [float(correct[c] / total[c]) if total[c] else float("nan") for c in range(num_classes)]
    n_f, n_r = int(total[is_forget].sum()), int(total[~is_forget].sum())
    return Accuracy(
        acc_f=float(correct[is_forget].sum() / n_f) if n_f else float("nan"),
        acc_r=float(correct[~is_forget].sum() / n_r) if n_r else float("nan"),
        per_class=per_class,
        n_forget=n_f,
        n_retain=n_r,
    )


def parity_max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b| over entries finite in both; inf if their finiteness differs anywhere."""
    if a.shape != b.shape:
        return float("inf")
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(fa, fb):
        return float("inf")
    if not fa.any():
        return 0.0
    return float(np.max(np.abs(a[fa].astype(np.float64) - b[fb].astype(np.float64))))
