"""Measure one exported model with onnxruntime, in one pass over each split.

A verification copy of the graph (verify/features.py) outputs the logits and
the head's input together, so one pass over the test split gives accuracy
(streamed: per-class counts) and the evidence's features, and one pass over
a seeded subset of the training split gives the probe's and the attack's
inputs. That the copy's logits are the shipped file's is proved on every
measurement: the shipped file is run on the first test batch and the two
must agree to ``COPY_ATOL``. Used for the original, the unlearned model and
the retrained reference alike.

Memory does not grow with the data: the split streams through, and only the
evidence subsets (at most ``EVIDENCE_MAX_TEST`` test and ``PROBE_MAX_TRAIN``
training images, seeded; all of them for sets up to that size) keep their
logits and features.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from nhle_pipeline.export.errors import OnnxFileError
from nhle_pipeline.verify.errors import ProviderUnavailable
from nhle_pipeline.verify.evidence import (
    PROBE_MAX_TRAIN,
    Evidence,
    evidence_from_outputs,
    subsample,
)
from nhle_pipeline.verify.features import with_feature_output
from nhle_pipeline.verify.metrics import Accuracy, accuracy_from_counts
from nhle_pipeline.verify.ort import open_session

EVIDENCE_MAX_TEST = 10_000  # test images whose features the evidence uses (seeded subset above this)
COPY_ATOL = 1e-6  # the verification copy's logits vs the shipped file's, same provider


class ImageSource(Protocol):
    """A split streamed in batches: labels ``y`` (N,) in memory, images fetched on demand."""

    y: np.ndarray

    def image_batches(self, indices: np.ndarray | None, batch_size: int) -> Iterator[np.ndarray]:
        """float32 (k, C, H, W) batches of ``indices`` (None: all), in that order."""
        ...


@dataclass
class ModelOutputs:
    """What one model said about the data: everything the metrics need, for any forget request."""

    correct: np.ndarray  # (classes,) test samples of each class predicted right
    total: np.ndarray  # (classes,) test samples of each class
    test_idx: np.ndarray  # positions of the evidence's test subset
    test_logits: np.ndarray  # (n, classes) on test_idx
    test_features: np.ndarray  # (n, D) head input on test_idx
    train_idx: np.ndarray  # positions of the training subset
    train_logits: np.ndarray
    train_features: np.ndarray
    provider: str
    copy_max_abs: float  # |verification copy - shipped file| logits on the first test batch
    # the layer-wise audit (verify/audit_layers.py): its tensors and their pooled features on
    # test_idx and train_idx, one array per layer
    layers: tuple[str, ...] = ()
    test_layer_features: tuple[np.ndarray, ...] = ()
    train_layer_features: tuple[np.ndarray, ...] = ()


@dataclass
class Measurement:
    accuracy: Accuracy
    evidence: Evidence
    test_idx: np.ndarray  # the test subset below (all of the test split up to EVIDENCE_MAX_TEST)
    test_logits: np.ndarray  # (n, classes), from the measured file itself
    test_features: np.ndarray  # (n, D) penultimate features
    provider: str
    copy_max_abs: float
    train_idx: np.ndarray | None = None  # the training subset (PROBE_MAX_TRAIN, seeded)
    train_features: np.ndarray | None = None  # (m, D) its head-input features
    layers: tuple[str, ...] = ()  # the layer-wise audit's tensors (ModelOutputs)
    test_layer_features: tuple[np.ndarray, ...] = ()
    train_layer_features: tuple[np.ndarray, ...] = ()


def run_model(
    onnx_path: Path,
    head_name: str,
    train: ImageSource,
    test: ImageSource,
    num_classes: int,
    *,
    seed: int,
    device: str,
    batch_size: int,
    scratch: Path,
    shard: tuple[int, int] = (0, 1),
    device_id: int = 0,
    shipped_logits: bool = False,
    layers: list[str] | None = (),
) -> ModelOutputs:
    """One pass over ``test`` and one over a seeded subset of ``train`` through ``onnx_path``.

    ``shipped_logits``: take the logits from ``onnx_path`` itself and only the features from
    the verification copy (a quantized or float16 derivative: exposing the head's input stops
    onnxruntime fusing the nodes around it, so the copy's logits differ from the shipped file's
    by a quantization step; ``copy_max_abs`` then records by how much).

    ``shard=(rank, world)``: only every world-th batch, starting at batch ``rank``
    (the batches are those of the whole pass); ``merge_outputs`` joins the shards.
    ``device_id``: the GPU onnxruntime's CUDA provider uses (this process's local rank).
    ``layers``: the tensors of the layer-wise audit, pooled per image (verify/audit_layers.py):
    ``()`` none, ``None`` the automatic choice; a tensor the graph lacks raises AuditLayerError.
    """
    from nhle_pipeline.export.onnx_file import load_onnx
    from nhle_pipeline.verify.audit_layers import resolve_layers
    from nhle_pipeline.verify.features import head_input

    graph = load_onnx(onnx_path)  # once: the layers are found in it, then it becomes the copy
    audited: list[tuple[str, int]] = []
    if layers is None or len(layers):
        audited = resolve_layers(graph, head_input(graph, head_name, onnx_path), None if layers is None else list(layers))
    n_layers = len(audited)
    feat_path = with_feature_output(onnx_path, head_name, scratch / f"{Path(onnx_path).stem}.features.onnx", audited,
                                    model=graph)
    fsess, provider = open_session(feat_path, device, device_id)
    in_name = fsess.get_inputs()[0].name
    ship = open_session(onnx_path, device, device_id)[0] if shipped_logits else None

    def forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        logits, feats, *extra = fsess.run(None, {in_name: x})[: 2 + n_layers]
        logits = logits if ship is None else ship.run(None, {in_name: x})[0]
        if logits.ndim != 2 or logits.shape[1] != num_classes:  # a model claimed for another class count
            got = logits.shape[1] if logits.ndim == 2 else f"an array of shape {tuple(logits.shape[1:])} of"
            raise OnnxFileError(f"{onnx_path}: outputs {got} logits per image, but model.num_classes is {num_classes}")
        return logits, feats, [e.reshape(len(e), -1).astype(np.float32) for e in extra]

    y = np.asarray(test.y)
    test_idx = subsample(len(y), EVIDENCE_MAX_TEST, seed)
    keep = np.zeros(len(y), dtype=bool)
    keep[test_idx] = True
    correct = np.zeros(num_classes, dtype=np.int64)
    total = np.bincount(y, minlength=num_classes)[:num_classes].astype(np.int64)
    kept_idx, kept_logits, kept_feats = [], [], []
    kept_layers: list[list[np.ndarray]] = [[] for _ in audited]
    copy_max_abs = float("nan")
    mine = shard_rows(np.arange(len(y)), batch_size, *shard)
    start = 0
    for x in test.image_batches(mine, batch_size):
        logits, feats, extra = forward(x)
        pos = mine[start : start + len(x)]
        yb, kb = y[pos], keep[pos]
        if start == 0:
            copy_logits = logits if ship is None else fsess.run(None, {in_name: x})[0]
            copy_max_abs = _copy_check(onnx_path, device, device_id, x, copy_logits)
        hit = logits.argmax(axis=1) == yb
        np.add.at(correct, yb[hit], 1)
        if kb.any():
            kept_idx.append(pos[kb])
            kept_logits.append(logits[kb].astype(np.float32))
            kept_feats.append(feats.reshape(len(feats), -1)[kb].astype(np.float32))
            for kept, e in zip(kept_layers, extra, strict=True):
                kept.append(e[kb])
        start += len(x)
    train_idx = shard_rows(subsample(len(train.y), PROBE_MAX_TRAIN, seed), batch_size, *shard)
    tr_logits, tr_feats = [], []
    tr_layers: list[list[np.ndarray]] = [[] for _ in audited]
    for x in train.image_batches(train_idx, batch_size):
        lg, ft, extra = forward(x)
        tr_logits.append(lg.astype(np.float32))
        tr_feats.append(ft.reshape(len(ft), -1).astype(np.float32))
        for kept, e in zip(tr_layers, extra, strict=True):
            kept.append(e)
    return ModelOutputs(
        correct, total, _cat(kept_idx, np.int64), _cat(kept_logits), _cat(kept_feats), train_idx,
        _cat(tr_logits), _cat(tr_feats), provider, copy_max_abs,
        layers=tuple(t for t, _ in audited), test_layer_features=tuple(_cat(k) for k in kept_layers),
        train_layer_features=tuple(_cat(k) for k in tr_layers),
    )


def shard_rows(rows: np.ndarray, batch_size: int, rank: int, world: int) -> np.ndarray:
    """The rows of every world-th batch of ``rows``, starting at batch ``rank``."""
    if world == 1:
        return np.asarray(rows, dtype=np.int64)
    chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)][rank::world]
    return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)


def merge_outputs(parts: list[ModelOutputs]) -> ModelOutputs:
    """The shards of one pass (``run_model(shard=...)``) as the single-process result."""
    if len(parts) == 1:
        return parts[0]

    def joined(idx_name: str, *names: str, layers: str) -> list:
        idx = np.concatenate([getattr(p, idx_name) for p in parts])
        order = np.argsort(idx, kind="stable")
        full: list = [idx[order]]
        some = [p for p in parts if len(getattr(p, idx_name))]
        for n in names:
            arrays = [getattr(p, n) for p in some]
            full.append(np.concatenate(arrays)[order] if arrays else parts[0].__dict__[n])
        full.append(tuple(np.concatenate([getattr(p, layers)[i] for p in some])[order] if some
                          else getattr(parts[0], layers)[i] for i in range(len(parts[0].layers))))
        return full

    test_idx, test_logits, test_feats, test_layers = joined("test_idx", "test_logits", "test_features",
                                                            layers="test_layer_features")
    train_idx, train_logits, train_feats, train_layers = joined("train_idx", "train_logits", "train_features",
                                                                layers="train_layer_features")
    checks = [p.copy_max_abs for p in parts if not np.isnan(p.copy_max_abs)]
    providers = sorted({p.provider for p in parts})
    if len(providers) > 1:  # one provider per verification: a shard on the CPU is not a CUDA result
        raise ProviderUnavailable(f"the shards ran on different onnxruntime providers ({', '.join(providers)}); "
                                  "give each rank a GPU it can use, or run with device: cpu")
    return ModelOutputs(
        correct=np.sum([p.correct for p in parts], axis=0), total=parts[0].total,
        test_idx=test_idx, test_logits=test_logits, test_features=test_feats,
        train_idx=train_idx, train_logits=train_logits, train_features=train_feats,
        provider=parts[0].provider, copy_max_abs=max(checks) if checks else float("nan"),
        layers=parts[0].layers, test_layer_features=test_layers, train_layer_features=train_layers,
    )


def _copy_check(onnx_path: Path, device: str, device_id: int, x: np.ndarray, copy_logits: np.ndarray) -> float:
    """Max |shipped - copy| logits on one batch (inf where their finiteness differs)."""
    from nhle_pipeline.verify.metrics import parity_max_abs

    sess, _ = open_session(onnx_path, device, device_id)
    shipped = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return parity_max_abs(shipped.astype(np.float32), copy_logits.astype(np.float32))


def _cat(parts: list[np.ndarray], dtype=np.float32) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, 0) if dtype == np.float32 else 0, dtype)


def measurement(
    out: ModelOutputs, train_y: np.ndarray, test_y: np.ndarray, forget: list[int], num_classes: int, seed: int
) -> Measurement:
    """Accuracy and evidence for one forget request, from a model's outputs."""
    ev = evidence_from_outputs(
        (out.train_logits, out.train_features, np.asarray(train_y)[out.train_idx]),
        (out.test_logits, out.test_features, np.asarray(test_y)[out.test_idx]),
        forget, seed,
    )
    acc = accuracy_from_counts(out.correct, out.total, forget, num_classes)
    return Measurement(acc, ev, out.test_idx, out.test_logits, out.test_features, out.provider, out.copy_max_abs,
                       out.train_idx, out.train_features, out.layers, out.test_layer_features,
                       out.train_layer_features)


def measure_onnx(
    onnx_path: Path,
    head_name: str,
    train: ImageSource,
    test: ImageSource,
    forget: list[int],
    num_classes: int,
    *,
    seed: int,
    device: str,
    batch_size: int,
    scratch: Path,
    shipped_logits: bool = False,
    layers: list[str] | None = (),
) -> Measurement:
    """Accuracy and evidence of ``onnx_path``: the full ``test`` split, a seeded subset of ``train``
    (``shipped_logits``, ``layers``: see ``run_model``)."""
    out = run_model(onnx_path, head_name, train, test, num_classes, seed=seed, device=device,
                    batch_size=batch_size, scratch=scratch, shipped_logits=shipped_logits, layers=layers)
    return measurement(out, train.y, test.y, forget, num_classes, seed)
