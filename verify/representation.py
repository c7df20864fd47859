"""Does the forgetting reach the features? The representation-level audit.

Acc_F = 0 and a masked head say the model no longer *outputs* a class; the
features the head reads may still carry it, and anyone holding the file can
put a fresh head on them. Two diagnostics (Mirage, arXiv 2605.20282; Gao et
al., arXiv 2604.08271), both from the head-input features the evidence pass
already computes (no extra onnxruntime pass):

- **LPR, linear-probe recovery**: a multinomial logistic regression on
  standardised features of a seeded, class-balanced training subset of *all*
  classes (``LPR_PER_CLASS`` images each), scored on the test images of the
  forgotten classes (``lpr_f``: the fraction a fresh head recovers) and of
  the retained ones (``lpr_r``).
- **Linear CKA** (centred kernel alignment) of two models' features on the
  same test images: 1 = the same representation up to rotation and scale.
  ``cka_original``: the model against the original; ``cka_reference``:
  against the retrained reference (``verify.reference: retrain``).

The level a release reaches (``forgetting_level``):

- ``output``: the shipped file never outputs the forgotten classes (the
  ``output_masked`` gate) — what masking alone reaches;
- ``representation``: with a retrained reference, the release's features are
  where retraining puts them on the two diagnostics about the forgotten
  classes — LPR_F and Ratio_D (verify/evidence.py) each within a quarter of
  the original→reference gap of the reference (``GAP_CLOSED_MIN``: 75 % of
  the gap closed), or within ``NOISE`` (relative, for Ratio_D; for LPR_F, at
  least one of the forgotten classes' test images, the probe's resolution) where the gap
  is smaller than that — and its CKA to the reference is higher than the
  original's (it moved toward retraining). CKA to the original is reported,
  not required: two trainings differ on the retained classes too, which no
  unlearning of a class should copy.
  Without a reference the level is at most ``output``: a linear probe
  recovers most classes even from a model that never learned them (a
  retrained digits MLP: 0.96), so no absolute threshold can say it.
"""

from __future__ import annotations

import numpy as np

from nhle_pipeline.verify.results import Result

LPR_PER_CLASS = 200  # training images per class the probe is fit on (seeded, balanced)
LPR_MAX_ITER = 1_000
GAP_CLOSED_MIN = 0.75  # the representation level: this fraction of the original->reference gap closed
NOISE = 0.01  # below this distance to the reference a diagnostic counts as reached (probe and CKA noise)


class Audit(Result):
    """One model's representation diagnostics at one layer."""

    layer: str  # the ONNX tensor audited (the head's input)
    lpr_f: float  # fresh linear probe's accuracy on the forgotten classes' test images
    lpr_r: float  # ... on the retained classes' test images
    cka_original: float  # linear CKA to the original's features on the same test images (1 for itself)
    cka_reference: float | None = None  # to the retrained reference's, when there is one


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of (n, d1) and (n, d2) features of the same n inputs; NaN if not finite."""
    if len(x) != len(y) or len(x) < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    x = x.astype(np.float64) - x.mean(axis=0)
    y = y.astype(np.float64) - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else float("nan")


def balanced_subset(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted positions of at most ``per_class`` seeded draws from each class of ``y``."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(y):
        pool = np.flatnonzero(y == c)
        picks.append(pool if len(pool) <= per_class else rng.choice(pool, per_class, replace=False))
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64)


def linear_probe_recovery(train_feats: np.ndarray, train_y: np.ndarray, test_feats: np.ndarray,
                          test_y: np.ndarray, forget: list[int], seed: int) -> tuple[float, float]:
    """(LPR_F, LPR_R): a fresh multinomial probe on all classes' training features, scored on the
    forgotten and the retained classes' test images; NaN where it cannot be fit or scored."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    nan = (float("nan"), float("nan"))
    if len(np.unique(train_y)) < 2 or not (np.isfinite(train_feats).all() and np.isfinite(test_feats).all()):
        return nan
    idx = balanced_subset(train_y, LPR_PER_CLASS, seed)
    x = train_feats[idx].astype(np.float64)
    # a unit that is (nearly) constant on the probe's images (a dead ReLU) carries nothing, and the
    # scaler would blow another machine's float noise in it up to unit size: leave it out
    live = np.ptp(x, axis=0) > 1e-6 * max(1.0, float(np.abs(x).max()) if x.size else 1.0)
    if not live.any():
        return nan
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=LPR_MAX_ITER, random_state=seed))
    probe.fit(x[:, live], train_y[idx])
    hit = probe.predict(test_feats.astype(np.float64)[:, live]) == test_y
    fmask = np.isin(test_y, forget)
    lpr_f = float(hit[fmask].mean()) if fmask.any() else float("nan")
    lpr_r = float(hit[~fmask].mean()) if (~fmask).any() else float("nan")
    return lpr_f, lpr_r


def audit(layer: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
          forget: list[int], seed: int, *, original_test: np.ndarray | None,
          reference_test: np.ndarray | None = None) -> Audit:
    """One model's audit from its (features, labels) on the training subset and the test split;
    ``original_test``/``reference_test``: the original's / the reference's features on the same
    test images (None: not measured here; CKA NaN / None)."""
    lpr_f, lpr_r = linear_probe_recovery(*train, *test, forget, seed)
    feats = test[0]
    return Audit(
        layer=layer, lpr_f=lpr_f, lpr_r=lpr_r,
        cka_original=linear_cka(feats, original_test) if original_test is not None else float("nan"),
        cka_reference=linear_cka(feats, reference_test) if reference_test is not None else None,
    )


def gap_closed(release: float, original: float, reference: float) -> float:
    """Fraction of the original->reference gap the release closed (1: at the reference; NaN:
    no gap to close)."""
    gap = original - reference
    if not all(np.isfinite([release, original, reference])) or abs(gap) < 1e-12:
        return float("nan")
    return float((original - release) / gap)


def _reached(release: float, original: float, reference: float, resolution: float = 0.0) -> bool:
    """``resolution``: the smallest step the diagnostic can take (one test image of LPR_F)."""
    if not all(np.isfinite([release, original, reference])):
        return False
    # + 1e-9: one image's step, 1 - 44/45, is 1/45 only up to float rounding
    if abs(release - reference) <= max(NOISE * max(1.0, abs(reference)), resolution) + 1e-9:
        return True
    # + 1e-9: fractions of test images (3/4 of a gap of 4 images) are exact only up to float rounding
    return abs(release - reference) <= (1 - GAP_CLOSED_MIN) * abs(original - reference) + 1e-9


# One audited layer of the layer-wise audit: the original's, the unlearned model's, the reference's.
LayerAudits = tuple[Audit, Audit, "Audit | None"]


def forgetting_level(output_masked: bool | None, original: Audit, unlearned: Audit, reference: Audit | None,
                     ratio_d: tuple[float, float, float | None], layers: list[LayerAudits] = (),
                     n_forget_test: int | None = None) -> str:
    """``representation``, ``output`` or ``none`` (see the module docstring); ``ratio_d``: the
    original's, the unlearned model's and the reference's Ratio_D; ``layers``: the layer-wise
    audit, whose LPR_F must be reached at every layer too; ``n_forget_test``: the forgotten
    classes' test images LPR_F is a fraction of (one of them is its resolution)."""
    if not output_masked:
        return "none"
    if reference is None or ratio_d[2] is None:
        return "output"
    step = 1.0 / n_forget_test if n_forget_test else 0.0
    lpr = _reached(unlearned.lpr_f, original.lpr_f, reference.lpr_f, step) and all(
        r is not None and _reached(u.lpr_f, o.lpr_f, r.lpr_f, step) for o, u, r in layers)
    sep = _reached(ratio_d[1], ratio_d[0], ratio_d[2])
    toward = (unlearned.cka_reference is not None and original.cka_reference is not None
              and unlearned.cka_reference > original.cka_reference)
    return "representation" if lpr and sep and toward else "output"


def representation_block(original: Audit, unlearned: Audit, reference: Audit | None,
                         output_masked: bool | None, ratio_d: tuple[float, float, float | None],
                         layers: list[LayerAudits] = (), n_forget_test: int | None = None) -> dict:
    """The manifest's ``metrics.representation``: each model's audit at the head's input and at
    each audited layer, the gaps closed, the level."""
    block = {
        "layer": unlearned.layer,
        "original": original.to_dict(), "unlearned": unlearned.to_dict(),
        "reference": reference.to_dict() if reference is not None else None,
        "gap_closed": None,
        "layers": [{"layer": u.layer, "original": o.to_dict(), "unlearned": u.to_dict(),
                    "reference": r.to_dict() if r is not None else None,
                    "gap_closed": None if r is None else {"lpr_f": gap_closed(u.lpr_f, o.lpr_f, r.lpr_f)}}
                   for o, u, r in layers],
        "n_forget_test": n_forget_test,
        "level": forgetting_level(output_masked, original, unlearned, reference, ratio_d, layers, n_forget_test),
    }
    if reference is not None:
        block["gap_closed"] = {
            "lpr_f": gap_closed(unlearned.lpr_f, original.lpr_f, reference.lpr_f),
            "ratio_d": gap_closed(ratio_d[1], ratio_d[0], ratio_d[2]) if ratio_d[2] is not None else float("nan"),
            "cka_original": gap_closed(unlearned.cka_original, 1.0, reference.cka_original),
        }
    return block
