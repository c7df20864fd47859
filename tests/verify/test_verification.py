import dataclasses
import math

import numpy as np
import pytest

from nhle_pipeline.verify.evidence import Evidence
from nhle_pipeline.verify.measure import Measurement
from nhle_pipeline.verify.metrics import Accuracy
from nhle_pipeline.verify.verification import (
    GAP_KEYS,
    evidence_block,
    flat_metrics,
    gap_to_reference,
    verification_metrics,
)

NAN = float("nan")


def measurement(acc_f, acc_r, ratio_d=2.0, probe=0.9, mia=0.1, logits=None) -> Measurement:
    logits = np.zeros((4, 3), np.float32) if logits is None else logits
    values = {
        "accuracy": Accuracy(acc_f=acc_f, acc_r=acc_r, per_class=[acc_f, acc_r, acc_r], n_forget=2, n_retain=2),
        "evidence": Evidence(d_inter=2.0 * ratio_d, d_intra=2.0, ratio_d=ratio_d, probe_auc=probe, mia_efficacy=mia),
        "test_idx": np.arange(len(logits)),
        "test_logits": logits,
        "test_features": np.zeros((len(logits), 5), np.float32),
        "provider": "CPUExecutionProvider",
        "copy_max_abs": 0.0,
        "train_idx": np.arange(len(logits)),
        "train_features": np.zeros((len(logits), 5), np.float32),
    }
    return Measurement(**{f.name: values[f.name] for f in dataclasses.fields(Measurement) if f.name in values})


def test_gap_is_absolute_per_key_and_mean_over_finite_ones():
    unl = {"acc_f": 0.0, "acc_r": 0.90, "ratio_d": NAN, "probe_auc": 0.60, "mia_efficacy": 0.50}
    ref = {"acc_f": 0.0, "acc_r": 0.95, "ratio_d": 1.0, "probe_auc": 0.50, "mia_efficacy": NAN}
    gaps = gap_to_reference(unl, ref)
    assert set(gaps) == {*GAP_KEYS, "mean"}
    assert gaps["acc_r"] == pytest.approx(0.05) and gaps["probe_auc"] == pytest.approx(0.10)
    assert math.isnan(gaps["ratio_d"]) and math.isnan(gaps["mia_efficacy"])
    assert gaps["mean"] == pytest.approx((0.0 + 0.05 + 0.10) / 3)


def test_gap_mean_is_nan_when_nothing_is_finite():
    unl = dict.fromkeys(GAP_KEYS, NAN)
    ref = dict.fromkeys(GAP_KEYS, 0.5)
    gaps = gap_to_reference(unl, ref)
    assert all(math.isnan(gaps[k]) for k in GAP_KEYS)
    assert math.isnan(gaps["mean"])
    inf = gap_to_reference({**ref, "ratio_d": float("inf")}, ref)  # inf is not finite either
    assert inf["mean"] == 0.0


def test_flat_metrics_has_every_gap_key():
    flat = flat_metrics(measurement(0.1, 0.9, ratio_d=3.0, probe=0.7, mia=0.4))
    assert set(GAP_KEYS) <= set(flat)
    assert (flat["acc_f"], flat["acc_r"], flat["ratio_d"], flat["probe_auc"], flat["mia_efficacy"]) == (
        0.1, 0.9, 3.0, 0.7, 0.4)


def test_verification_metrics_without_reference():
    before = measurement(1.0, 0.97, ratio_d=4.0)
    logits = np.array([[0.0, 1.0, -1e4]] * 4, np.float32)
    after = measurement(0.0, 0.95, ratio_d=1.0, logits=logits)
    torch_logits = logits + np.float32(2e-4)
    m = verification_metrics(before, after, None, torch_logits=torch_logits, graph_unchanged=True,
                             cwm_in_graph=None, nhle={"steps": 3})
    assert {"original", "unlearned", "reference", "acc_f", "delta_acc_r", "parity_max_abs",
            "graph_unchanged", "evidence", "nhle"} <= set(m)
    assert "cwm_in_graph" not in m  # CWM did not run
    assert m["acc_f"] == 0.0 and m["delta_acc_r"] == pytest.approx(-0.02)
    assert m["parity_max_abs"] == pytest.approx(2e-4, rel=1e-2)
    assert m["original"] == before.accuracy.to_dict() and m["reference"] is None
    assert m["evidence"]["original"]["ratio_d"] == 4.0 and m["evidence"]["unlearned"]["ratio_d"] == 1.0
    assert m["evidence"]["reference"] is None and m["evidence"]["gap_to_reference"] is None
    assert m["nhle"] == {"steps": 3}


def test_verification_metrics_with_reference_and_cwm():
    before, after = measurement(1.0, 0.97), measurement(0.0, 0.95, probe=0.6)
    ref = measurement(0.0, 0.96, probe=0.5)
    m = verification_metrics(before, after, ref, torch_logits=after.test_logits.copy(), graph_unchanged=False,
                             cwm_in_graph=True, nhle={})
    assert m["cwm_in_graph"] is True and m["graph_unchanged"] is False and m["parity_max_abs"] == 0.0
    assert m["reference"] == ref.accuracy.to_dict()
    gap = m["evidence"]["gap_to_reference"]
    assert gap == gap_to_reference(flat_metrics(after), flat_metrics(ref))
    assert gap["probe_auc"] == pytest.approx(0.1) and gap["acc_r"] == pytest.approx(0.01)


def test_evidence_block_keys():
    a, b = measurement(0.0, 0.9), measurement(0.0, 0.9)
    block = evidence_block(a.evidence, b.evidence, None, b)
    assert block == {"original": a.evidence.to_dict(), "unlearned": b.evidence.to_dict(),
                     "reference": None, "gap_to_reference": None}


def test_a_forgotten_class_won_only_by_a_tie_is_counted():
    """A clamped head (SqueezeNet's ReLU after the conv head) gives the masked logit 0; where every
    retained logit is 0 too, argmax takes the lower id: those images are counted, the rest not."""
    import numpy as np

    from nhle_pipeline.verify.verification import forgotten_ties

    logits = np.array([[0.0, 0.0, 0.0],   # all tied: argmax 0, a forgotten class -> counted
                       [0.0, 2.0, 0.0],   # a retained class wins outright
                       [0.0, 0.0, -1.0],  # forgotten 0 tied with retained 1 at the top -> counted
                       [3.0, 1.0, 0.0]],  # forgotten 0 wins outright: not a tie
                      np.float32)
    assert forgotten_ties(logits, [0]) == 2
    assert forgotten_ties(logits, [2]) == 0  # ties go to the lower id, here a retained class
    assert forgotten_ties(logits[:0], [0]) == 0 and forgotten_ties(logits, [0, 1, 2]) == 0
