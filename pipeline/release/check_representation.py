"""`pipeline verify`'s representation audit: recomputed from the shipped file, never taken on trust.

From ``model.onnx`` alone verify recomputes the release's own linear-probe
recovery (LPR_F, LPR_R); with ``--source-weights`` also the original's audit
and the release's CKA to the original. The retrained reference is the
producer's (verify does not retrain): its figures are read from the manifest
and said to be. The level is worked out again from these numbers, and both
the numbers and the level must reproduce the manifest's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nhle_pipeline.verify.representation import Audit, audit, representation_block


@dataclass
class Reaudit:
    block: dict | None  # the recomputed metrics.representation (None: the release has none)
    pairs: list[tuple[float, float]] = field(default_factory=list)  # (recomputed, recorded) for reproduces_manifest
    what: str = ""  # what was recomputed, for the gate's description


def reaudit(recorded, recorded_evidence, got, original, data, forget: list[int], seed: int,
            output_masked: bool | None, notes: list[str]) -> Reaudit:
    """``recorded``: the manifest's ``metrics.representation`` (None: a release made before the
    audit), ``recorded_evidence`` its ``metrics.evidence`` (the original's and the reference's
    Ratio_D where verify does not measure them); ``got``/``original``: verify's measurements of
    the shipped file and, with --source-weights, of the original (else None), both at the
    recorded layers."""
    if recorded is None:
        notes.append("the release records no representation audit (made before it existed): its forgetting "
                     "level is not known")
        return Reaudit(None)
    y_train, y_test = np.asarray(data.train.y), np.asarray(data.test.y)
    pairs: list[tuple[float, float]] = []

    def feats(m, layer: int | None, split: str) -> np.ndarray:
        if layer is None:
            return m.test_features if split == "test" else m.train_features
        return (m.test_layer_features if split == "test" else m.train_layer_features)[layer]

    def at(layer: int | None, rec) -> tuple[Audit, Audit, Audit | None]:
        """The three audits at the head input (None) or layer ``layer``; ``rec``: their record."""
        def measured(m, original_test) -> Audit:
            return audit(rec.unlearned.layer, (feats(m, layer, "train"), y_train[m.train_idx]),
                         (feats(m, layer, "test"), y_test[m.test_idx]), forget, seed, original_test=original_test)

        rec_u, rec_o, reference = rec.unlearned, rec.original, rec.reference
        if original is not None:
            fresh = measured(original, feats(original, layer, "test"))  # CKA to the reference: the producer's
            orig = fresh.model_copy(update={"cka_reference": rec_o.cka_reference})
            unl = measured(got, feats(original, layer, "test"))
            pairs.extend([(orig.lpr_f, rec_o.lpr_f), (orig.lpr_r, rec_o.lpr_r), (unl.cka_original, rec_u.cka_original)])
        else:
            orig = rec_o
            fresh = measured(got, None)
            unl = fresh.model_copy(update={"cka_original": rec_u.cka_original, "cka_reference": rec_u.cka_reference})
        if reference is not None:
            unl = unl.model_copy(update={"cka_reference": rec_u.cka_reference})
        pairs.extend([(unl.lpr_f, rec_u.lpr_f), (unl.lpr_r, rec_u.lpr_r)])
        return orig, unl, reference

    head = at(None, recorded)
    layers = [at(i, rec) for i, rec in enumerate(recorded.layers)]
    where = f" at the head's input and {len(layers)} layer(s)" if layers else ""
    if original is not None:
        what = f"LPR_F, LPR_R, CKA to the original (the original's LPR too){where}"
    else:
        what = f"LPR_F, LPR_R{where} (CKA to the original is the manifest's: pass --source-weights to recompute it)"
        notes.append("representation audit: CKA to the original taken from the manifest (pass --source-weights "
                     "to measure it here)")
    if recorded.reference is not None:
        notes.append("representation audit: the retrained reference's figures are the producer's (verify does "
                     "not retrain)")
    ev = recorded_evidence
    ratio_d = (original.evidence.ratio_d if original is not None else ev.original.ratio_d, got.evidence.ratio_d,
               ev.reference.ratio_d if ev.reference is not None else None)
    n_forget = int(np.isin(y_test[got.test_idx], forget).sum())
    return Reaudit(representation_block(*head, output_masked, ratio_d, layers, n_forget), pairs, what)
