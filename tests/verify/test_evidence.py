import numpy as np
import pytest

from nhle_pipeline.verify.evidence import (
    Evidence,
    evidence_from_outputs,
    mia_efficacy,
    probe_auc,
    separability,
    subsample,
    true_label_prob,
)


def test_separability_matches_hand_computed_values():
    # forgotten class 0 at (0,0) +/- 1 on x; retained classes 1 and 2 centred at (3,4) and (6,8)
    f = np.array([[-1, 0], [1, 0], [3, 4], [3, 4], [6, 8], [6, 8]], dtype=np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    d_inter, d_intra, ratio = separability(f, y, [0])
    assert d_intra == pytest.approx(1.0)
    assert d_inter == pytest.approx((5.0 + 10.0) / 2)
    assert ratio == pytest.approx(7.5)
    # two forgotten classes: pairs (0,2) and (1,2), samples pooled for D_intra
    d_inter2, d_intra2, _ = separability(f, y, [0, 1])
    assert d_inter2 == pytest.approx((10.0 + 5.0) / 2)
    assert d_intra2 == pytest.approx(0.5)  # (1 + 1 + 0 + 0) / 4


def test_probe_auc_separable_vs_random():
    rng = np.random.default_rng(0)
    y_tr, y_te = rng.integers(0, 4, 400), rng.integers(0, 4, 200)
    shift = lambda y: (y == 0)[:, None] * 3.0  # noqa: E731
    x_tr, x_te = rng.normal(size=(400, 5)) + shift(y_tr), rng.normal(size=(200, 5)) + shift(y_te)
    assert probe_auc(x_tr, y_tr, x_te, y_te, [0], seed=0) > 0.99
    noise_auc = probe_auc(rng.normal(size=(400, 5)), y_tr, rng.normal(size=(200, 5)), y_te, [0], seed=0)
    assert 0.3 < noise_auc < 0.7


def test_true_label_prob_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0], [0.0, -1e4]], np.float32)
    np.testing.assert_allclose(true_label_prob(logits, np.array([0, 0])), [1.0, 1.0])


def test_mia_efficacy_tells_seen_from_unseen():
    rng = np.random.default_rng(0)
    n = 600
    y_tr, y_te = rng.integers(0, 3, n), rng.integers(0, 3, n)

    def logits(y, conf):  # true-label logit = conf, others 0
        z = np.zeros((len(y), 3), np.float32)
        z[np.arange(len(y)), y] = conf
        return z

    # members (train) are confident, non-members (test) are not
    tr = logits(y_tr, rng.uniform(6, 8, n))
    te = logits(y_te, rng.uniform(0, 1, n))
    seen = mia_efficacy(tr, y_tr, te, y_te, [0], seed=0)
    tr_forgot = tr.copy()
    tr_forgot[y_tr == 0] = logits(y_tr[y_tr == 0], rng.uniform(0, 1, (y_tr == 0).sum()))
    unseen = mia_efficacy(tr_forgot, y_tr, te, y_te, [0], seed=0)
    assert seen < 0.05 and unseen > 0.95


def test_degenerate_inputs_give_nan_not_an_exception():
    f = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
    assert all(np.isnan(v) for v in separability(f, np.array([1, 2]), [0]))  # no forgotten sample
    assert all(np.isnan(v) for v in separability(f, np.array([0, 0]), [0]))  # nothing retained
    y_all_forgotten = np.zeros(10, int)
    assert np.isnan(probe_auc(np.zeros((10, 2)), y_all_forgotten, np.zeros((4, 2)), np.arange(4), [0], seed=0))
    z = np.zeros((6, 3), np.float32)
    assert np.isnan(mia_efficacy(z, np.array([1, 2, 1, 2, 1, 2]), z, np.array([1, 2, 1, 2, 1, 2]), [0], seed=0))


def test_subsample_is_sorted_seeded_and_capped():
    np.testing.assert_array_equal(subsample(5, 10, seed=0), np.arange(5))
    a = subsample(1000, 50, seed=3)
    assert len(a) == 50 and len(set(a)) == 50 and np.all(np.diff(a) > 0) and a.max() < 1000
    np.testing.assert_array_equal(a, subsample(1000, 50, seed=3))
    assert not np.array_equal(a, subsample(1000, 50, seed=4))


def test_evidence_from_outputs_combines_the_three_measures():
    rng = np.random.default_rng(0)
    y_tr, y_te = rng.integers(0, 3, 300), rng.integers(0, 3, 150)
    f_tr, f_te = rng.normal(size=(300, 4)) + y_tr[:, None], rng.normal(size=(150, 4)) + y_te[:, None]
    lg_tr, lg_te = rng.normal(size=(300, 3)), rng.normal(size=(150, 3))
    ev = evidence_from_outputs((lg_tr, f_tr, y_tr), (lg_te, f_te, y_te), [0], seed=0)
    d_inter, d_intra, ratio = separability(f_te, y_te, [0])
    assert isinstance(ev, Evidence)
    assert (ev.d_inter, ev.d_intra, ev.ratio_d) == (d_inter, d_intra, ratio)
    assert ev.probe_auc == probe_auc(f_tr, y_tr, f_te, y_te, [0], seed=0) and ev.probe_auc > 0.8
    assert ev.mia_efficacy == mia_efficacy(lg_tr, y_tr, lg_te, y_te, [0], seed=0)
    assert set(ev.to_dict()) == {"d_inter", "d_intra", "ratio_d", "probe_auc", "mia_efficacy"}
