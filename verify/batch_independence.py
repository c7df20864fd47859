"""Does the model answer the same whatever the batch it is served in?

verify measures in batches of hundreds; a server sends one image at a time,
or whatever its dynamic batcher gathers. A graph can tell the two apart (its
batch dimension is an input like any other), so the numbers verify measured
hold for serving only if the logits do not depend on the batch. A few test
images, forgotten classes first, are run again at batch 1 and in odd-sized
batches, and compared with the logits of the measuring pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nhle_pipeline.verify.metrics import parity_max_abs
from nhle_pipeline.verify.ort import open_session, ort_logits

BATCH_SIZES = (1, 3)  # besides the measuring pass's own
SAMPLES_PER_GROUP = 8  # forgotten-class images, and as many others


def batch_sample(test_idx: np.ndarray, test_y: np.ndarray, forget: list[int]) -> np.ndarray:
    """Rows of the measuring pass's test subset to re-run: the first forgotten-class ones, then others."""
    y = np.asarray(test_y)[test_idx]
    hit = np.flatnonzero(np.isin(y, forget))[:SAMPLES_PER_GROUP]
    other = np.flatnonzero(~np.isin(y, forget))[:SAMPLES_PER_GROUP]
    return np.sort(np.concatenate([hit, other]))


def batch_disagreement(onnx_path: str | Path, images: np.ndarray, reference: np.ndarray, *,
                       device: str = "cpu") -> float:
    """Largest |logits at batch b - ``reference``| over ``BATCH_SIZES`` (inf where finiteness differs).

    ``images`` (S, C, H, W) float32 and ``reference`` (S, classes): the same images' logits from
    the measuring pass."""
    sess, _ = open_session(onnx_path, device)
    worst = 0.0
    for size in BATCH_SIZES:
        got = ort_logits(sess, images, size).astype(np.float32)
        worst = max(worst, parity_max_abs(got, reference.astype(np.float32)))
    return worst
