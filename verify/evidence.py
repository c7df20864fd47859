"""Evidence of forgetting beyond accuracy: separability, probe leakage, membership inference.

Masking the head alone gives Acc_F = 0, so these look at what the model still
knows. Definitions (fixed; used by the gates, the report and the benchmarks):

- Features f(x): the input of the classifier head (penultimate layer), test split.
- D_intra: mean Euclidean distance of forgotten-class samples to their own
  class centroid (several forgotten classes: pooled over all their samples).
- D_inter: mean Euclidean distance between the centroid of each forgotten
  class and the centroid of each retained class (several forgotten classes:
  mean over every (forgotten, retained) pair).
- Ratio_D = D_inter / D_intra: scale-free; smaller means the forgotten classes
  are less separable from the rest.
- Probe AUC: a logistic-regression probe (standardised features) trained on
  training-split features to tell forgotten-class samples from retained ones,
  scored on the test split (ROC AUC). 0.5 = no leakage; what anyone holding
  the ONNX file could do.
- MIA-efficacy: an RBF SVM on one scalar per sample, the softmax probability
  of the true label, trained to tell retained training samples (members) from
  retained-class test samples (non-members), balanced; applied to training
  samples of the forgotten classes; the fraction judged non-members. Higher
  means the forget set looks less like training data (compare to retraining).
"""

from __future__ import annotations

import numpy as np

from nhle_pipeline.verify.results import Result

# Caps keep the sklearn fits to seconds on 2 cores; subsets are seeded.
PROBE_MAX_TRAIN = 10_000
MIA_MAX_PER_SIDE = 2_000
PROBE_MAX_ITER = 2_000


class Evidence(Result):
    """The feature-space and membership evidence of one model (this module's docstring)."""

    d_inter: float
    d_intra: float
    ratio_d: float
    probe_auc: float
    mia_efficacy: float


def separability(features: np.ndarray, y: np.ndarray, forget: list[int]) -> tuple[float, float, float]:
    """(D_inter, D_intra, Ratio_D) as defined in the module docstring; NaN when a feature is
    NaN or infinite (no distance is measured: the gates fail closed)."""
    if not np.isfinite(features).all():
        return float("nan"), float("nan"), float("nan")
    classes = [c for c in np.unique(y)]
    centroids = {int(c): features[y == c].mean(axis=0) for c in classes}
    fmask = np.isin(y, forget)
    if not fmask.any() or len(centroids) == len([c for c in classes if c in forget]):
        return float("nan"), float("nan"), float("nan")
    own = np.stack([centroids[int(c)] for c in y[fmask]])  # (Nf, D)
    d_intra = float(np.linalg.norm(features[fmask] - own, axis=1).mean())
    pairs = [
        np.linalg.norm(centroids[f] - centroids[r])
        for f in forget if f in centroids
        for r in centroids if r not in forget
    ]
    d_inter = float(np.mean(pairs))
    return d_inter, d_intra, d_inter / d_intra if d_intra > 0 else float("inf")


def probe_auc(
    train_feats: np.ndarray, train_y: np.ndarray, test_feats: np.ndarray, test_y: np.ndarray, forget: list[int], seed: int
) -> float:
    """ROC AUC of a forgotten-vs-retained logistic probe (train split -> test split); NaN when
    a feature is NaN or infinite (no probe can be fit: the gates fail closed)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t_lab, s_lab = np.isin(train_y, forget), np.isin(test_y, forget)
    if t_lab.all() or not t_lab.any() or s_lab.all() or not s_lab.any():
        return float("nan")
    if not (np.isfinite(train_feats).all() and np.isfinite(test_feats).all()):
        return float("nan")
    probe = make_pipeline(
        StandardScaler(),
        LogisticRegression(max_iter=PROBE_MAX_ITER, class_weight="balanced", random_state=seed),
    )
    probe.fit(train_feats, t_lab)
    return float(roc_auc_score(s_lab, probe.predict_proba(test_feats)[:, 1]))


def true_label_prob(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Softmax probability of each sample's true label, computed stably in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p[np.arange(len(y)), y]


def mia_efficacy(
    train_logits: np.ndarray, train_y: np.ndarray, test_logits: np.ndarray, test_y: np.ndarray, forget: list[int], seed: int
) -> float:
    """Fraction of forgotten-class training samples an RBF-SVM membership attack calls non-members;
    NaN when a probability it needs is NaN (NaN or infinite logits: the gates fail closed)."""
    from sklearn.svm import SVC

    rng = np.random.default_rng(seed)
    member = np.flatnonzero(~np.isin(train_y, forget))
    nonmember = np.flatnonzero(~np.isin(test_y, forget))
    target = np.flatnonzero(np.isin(train_y, forget))
    n = min(len(member), len(nonmember), MIA_MAX_PER_SIDE)
    if n == 0 or len(target) == 0:
        return float("nan")
    member, nonmember = rng.choice(member, n, replace=False), rng.choice(nonmember, n, replace=False)
    x = np.concatenate([
        true_label_prob(train_logits[member], train_y[member]),
        true_label_prob(test_logits[nonmember], test_y[nonmember]),
    ])[:, None]
    label = np.concatenate([np.ones(n), np.zeros(n)])
    scored = true_label_prob(train_logits[target], train_y[target])[:, None]
    if not (np.isfinite(x).all() and np.isfinite(scored).all()):
        return float("nan")
    attack = SVC(kernel="rbf", C=3.0, gamma="auto", random_state=seed).fit(x, label)
    judged = attack.predict(scored)
    return float((judged == 0).mean())


def subsample(n: int, cap: int, seed: int) -> np.ndarray:
    """Sorted seeded subset of range(n) of size min(n, cap)."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def evidence_from_outputs(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    forget: list[int],
    seed: int,
) -> Evidence:
    """Evidence from (logits, features, labels) of a training subset and the test split."""
    tr_logits, tr_feats, tr_y = train
    te_logits, te_feats, te_y = test
    d_inter, d_intra, ratio = separability(te_feats, te_y, forget)
    return Evidence(
        d_inter=d_inter,
        d_intra=d_intra,
        ratio_d=ratio,
        probe_auc=probe_auc(tr_feats, tr_y, te_feats, te_y, forget, seed),
        mia_efficacy=mia_efficacy(tr_logits, tr_y, te_logits, te_y, forget, seed),
    )
