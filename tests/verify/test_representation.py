"""The representation-level audit (verify/representation.py): CKA and linear-probe recovery on
features whose answer holds by construction, and the level rule."""

from __future__ import annotations

import numpy as np
import pytest

from nhle_pipeline.verify.representation import (
    LPR_PER_CLASS,
    Audit,
    balanced_subset,
    forgetting_level,
    gap_closed,
    linear_cka,
    linear_probe_recovery,
    representation_block,
)


def _blobs(classes: int, dim: int, seed: int, same_as: dict[int, int] | None = None):
    """Train and test splits of Gaussian class clusters; ``same_as`` {c: d}: class c drawn from
    class d's cluster (no signal to tell them apart)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(classes, dim))
    for c, d in (same_as or {}).items():
        centres[c] = centres[d]

    def split(n_per: int):
        y = np.repeat(np.arange(classes), n_per)
        return centres[y] + rng.normal(size=(len(y), dim)), y

    return split(LPR_PER_CLASS), split(100)


def test_cka_is_one_for_the_same_features_up_to_rotation_and_scale():
    x = np.random.default_rng(0).normal(size=(300, 12))
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(12, 12)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.5 * x @ q + 7.0) == pytest.approx(1.0)  # rotation, isotropic scale, shift
    independent = linear_cka(x, np.random.default_rng(2).normal(size=(300, 12)))
    assert 0 <= independent < 0.2
    assert np.isnan(linear_cka(x, x[:10])) and np.isnan(linear_cka(np.full((5, 2), np.nan), np.ones((5, 2))))


def test_balanced_subset_caps_every_class():
    y = np.array([0] * 500 + [1] * 30 + [2] * 250)
    idx = balanced_subset(y, 200, seed=0)
    assert np.bincount(y[idx]).tolist() == [200, 30, 200] and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, balanced_subset(y, 200, seed=0))


def test_a_fresh_probe_recovers_a_separate_class_and_not_one_without_signal():
    train, test = _blobs(5, 16, 0)
    lpr_f, lpr_r = linear_probe_recovery(*train, *test, [0], seed=0)
    assert lpr_f > 0.95 and lpr_r > 0.95
    # class 0 drawn from class 1's cluster: a probe splits them at chance, recovering about half
    train, test = _blobs(5, 16, 0, {0: 1})
    lpr_f, lpr_r = linear_probe_recovery(*train, *test, [0], seed=0)
    assert lpr_f < 0.75 and lpr_r > 0.75
    nan = linear_probe_recovery(np.full((10, 2), np.nan), np.arange(10) % 2, np.ones((4, 2)), np.arange(4) % 2, [0], 0)
    assert all(np.isnan(nan))


def _audit(lpr_f: float, cka_reference: float | None) -> Audit:
    return Audit(layer="h", lpr_f=lpr_f, lpr_r=0.9, cka_original=0.95, cka_reference=cka_reference)


def test_the_level_needs_a_masked_output_and_a_reference_for_the_features():
    orig, ref = _audit(0.99, 0.80), _audit(0.60, 1.0)
    masked_only = _audit(0.99, 0.80)
    deep = _audit(0.65, 0.85)  # LPR_F within a quarter of the gap, closer to the reference than the original
    rd = (4.0, 2.3, 2.0)  # Ratio_D original, unlearned, reference: 85 % of the gap closed
    assert forgetting_level(False, orig, deep, ref, rd) == "none"
    assert forgetting_level(True, orig, deep, None, (4.0, 2.3, None)) == "output"  # no reference: at most output
    assert forgetting_level(True, orig, masked_only, ref, (4.0, 4.0, 2.0)) == "output"
    assert forgetting_level(True, orig, deep, ref, rd) == "representation"
    assert forgetting_level(True, orig, deep, ref, (4.0, 3.0, 2.0)) == "output"  # Ratio_D half way
    assert forgetting_level(True, orig, _audit(0.65, 0.79), ref, rd) == "output"  # moved away from retraining
    assert forgetting_level(True, orig, _audit(0.80, 0.85), ref, rd) == "output"  # LPR_F half way
    assert forgetting_level(True, orig, _audit(float("nan"), 0.85), ref, rd) == "output"
    # a gap smaller than the noise: reaching the reference within NOISE is enough
    assert forgetting_level(True, _audit(0.965, 0.8), _audit(0.962, 0.85), _audit(0.96, 1.0), rd) == "representation"


def test_gap_closed_and_the_block():
    assert gap_closed(0.99, 0.99, 0.6) == 0.0 and gap_closed(0.6, 0.99, 0.6) == 1.0
    assert gap_closed(0.7, 0.7, 0.7) != gap_closed(0.7, 0.7, 0.7)  # no gap: NaN
    block = representation_block(_audit(0.99, 0.8), Audit(layer="h", lpr_f=0.795, lpr_r=0.9, cka_original=0.9, cka_reference=0.85), Audit(layer="h", lpr_f=0.6, lpr_r=0.9, cka_original=0.8, cka_reference=1.0),
                                 True, (4.0, 3.0, 2.0))
    closed = block["gap_closed"]
    assert closed["lpr_f"] == pytest.approx(0.5) and closed["cka_original"] == pytest.approx(0.5)
    assert closed["ratio_d"] == pytest.approx(0.5) and block["level"] == "output" and block["reference"]["lpr_f"] == 0.6
    assert representation_block(_audit(0.99, None), _audit(0.9, None), None, True, (4.0, 3.0, None))["gap_closed"] is None


def test_three_quarters_of_a_gap_of_test_images_is_three_quarters():
    """LPR_F is a count over test images: 89/90 -> 86/90 with the reference at 85/90 closes exactly
    3/4 of the gap, whatever float rounding says."""
    orig, unl, ref = _audit(89 / 90, 0.9), _audit(86 / 90, 0.95), _audit(85 / 90, 1.0)
    assert forgetting_level(True, orig, unl, ref, (3.2, 2.5, 2.3)) == "representation"
    assert forgetting_level(True, orig, _audit(87 / 90, 0.95), ref, (3.2, 2.5, 2.3)) == "output"


def test_the_statement_says_what_is_short_of_the_representation_level():
    from nhle_pipeline.pipeline.release.manifest import RepresentationRecord
    from nhle_pipeline.pipeline.release.report_view import forgetting_statement

    block = representation_block(_audit(0.99, 0.8), _audit(0.9, 0.82), _audit(0.6, 1.0), True, (4.0, 2.1, 2.0))
    text = forgetting_statement(RepresentationRecord.model_validate(block))
    assert text.startswith("forgetting level: output") and "LPR_F closed 23%" in text and "Ratio_D closed 95%" in text
    assert "CKA to the reference rose" in text


def test_every_audited_layer_must_reach_the_reference_too():
    orig, ref, deep = _audit(0.99, 0.80), _audit(0.60, 1.0), _audit(0.65, 0.85)
    rd = (4.0, 2.3, 2.0)
    reached = (Audit(layer="relu", lpr_f=0.95, lpr_r=0.9, cka_original=1.0, cka_reference=0.7), Audit(layer="relu", lpr_f=0.62, lpr_r=0.9, cka_original=0.8, cka_reference=0.9), Audit(layer="relu", lpr_f=0.6, lpr_r=0.9, cka_original=0.7, cka_reference=1.0))
    kept = (reached[0], Audit(layer="relu", lpr_f=0.93, lpr_r=0.9, cka_original=0.99, cka_reference=0.7), reached[2])  # the class still in the earlier layer
    assert forgetting_level(True, orig, deep, ref, rd, [reached]) == "representation"
    assert forgetting_level(True, orig, deep, ref, rd, [reached, kept]) == "output"
    block = representation_block(orig, deep, ref, True, rd, [kept])
    assert block["level"] == "output" and block["layers"][0]["layer"] == "relu"
    assert block["layers"][0]["gap_closed"]["lpr_f"] == pytest.approx((0.95 - 0.93) / (0.95 - 0.6))
