"""Measure one exported model with onnxruntime: accuracy on the file itself,
evidence from a feature-output copy of it. Used for the original, the
unlearned model and the retrained reference alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from nhle_pipeline.verify.evidence import (
    PROBE_MAX_TRAIN,
    Evidence,
    evidence_from_outputs,
    subsample,
)
from nhle_pipeline.verify.features import ort_logits_and_features, with_feature_output
from nhle_pipeline.verify.metrics import Accuracy, accuracy
from nhle_pipeline.verify.ort import open_session, ort_logits


class LabelledImages(Protocol):
    """A split as arrays: images ``x`` (N, C, H, W) float32 and labels ``y`` (N,) int64."""

    x: np.ndarray
    y: np.ndarray


@dataclass
class Measurement:
    accuracy: Accuracy
    evidence: Evidence
    test_logits: np.ndarray  # (N, classes), from the measured file itself
    test_features: np.ndarray  # (N, D) penultimate features
    provider: str


def measure_onnx(
    onnx_path: Path,
    head_name: str,
    train: LabelledImages,
    test: LabelledImages,
    forget: list[int],
    num_classes: int,
    *,
    seed: int,
    device: str,
    batch_size: int,
    scratch: Path,
) -> Measurement:
    """Accuracy and evidence of ``onnx_path``: the full ``test`` split, a seeded subset of ``train``."""
    sess, provider = open_session(onnx_path, device)
    test_logits = ort_logits(sess, test.x, batch_size)
    feat_path = with_feature_output(onnx_path, head_name, scratch / f"{onnx_path.stem}.features.onnx")
    fsess, _ = open_session(feat_path, device)
    _, test_feats = ort_logits_and_features(fsess, test.x, batch_size)
    idx = subsample(len(train.y), PROBE_MAX_TRAIN, seed)
    train_logits, train_feats = ort_logits_and_features(fsess, train.x[idx], batch_size)
    ev = evidence_from_outputs(
        (train_logits, train_feats, train.y[idx]), (test_logits, test_feats, test.y), forget, seed
    )
    acc = accuracy(test_logits, test.y, forget, num_classes)
    return Measurement(acc, ev, test_logits, test_feats, provider)
