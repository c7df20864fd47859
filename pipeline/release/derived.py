"""Derived releases (``pipeline quantize``): the parent they name, and how `pipeline verify`
judges them.

A derived release is a release: the same hygiene, signature, seal, checksums,
layout, provenance and config checks apply (check_structure.py), and its accuracy and
evidence are recomputed on its own ``model.onnx`` by onnxruntime (on the CPU
unless ``--device cuda`` is asked for: INT8 kernels differ between providers).
What differs is the judgment (verify/precision.py): reduced precisions are held
to top-1 agreement with the fp32 parent and to the accuracy gates, not to an
atol; CWM is seen in the output (the forgotten classes' logits are one
constant), since the head's rows are no longer float32 initializers.

The chain: with ``--parent PARENT_DIR`` the parent is checked like any release
(hygiene, seal, checksums, layout, provenance, config), its seal and model
sha256 must be the ones the derived manifest names, and the agreement is
recomputed against the parent's model; without it the recorded agreement is
used, and verify says so.
"""

from __future__ import annotations

from pathlib import Path

from nhle_pipeline.pipeline.errors import InputError, ReleaseError, TamperedReleaseError
from nhle_pipeline.pipeline.release.files import MANIFEST, MODEL
from nhle_pipeline.pipeline.release.manifest import Manifest


def check_parent(parent: Path) -> Manifest:
    """An fp32 release, checked as `pipeline verify` checks one before recomputing (hygiene, seal,
    checksums, layout, provenance, config); returns its manifest. A derived release is refused."""
    from nhle_pipeline.pipeline.release.check_structure import (
        check_config,
        check_files,
        check_layout,
        check_provenance,
        read_manifest,
        scan_release,
    )

    tree = scan_release(parent)
    manifest = read_manifest(parent)
    check_files(parent, manifest, tree)
    check_layout(parent, manifest)
    check_provenance(parent, manifest)
    check_config(parent, manifest)
    if manifest.derived is not None:
        raise ReleaseError(f"{parent}: a derived release ({manifest.derived.precision} of "
                           f"'{manifest.derived.parent.name}'), not an fp32 parent")
    if manifest.status != "released" or not manifest.passed:
        raise ReleaseError(f"{parent}: its manifest says status '{manifest.status}'; not a released model")
    return manifest


def check_chain(release: Path, manifest: Manifest, parent: str | Path | None) -> Manifest | None:
    """With ``parent``: check it and that it is the release ``manifest`` derives from; returns its manifest."""
    if parent is None:
        return None
    if manifest.derived is None:
        raise InputError(f"--parent: {release} is not a derived release (its manifest names no parent)")
    parent = Path(parent)
    pm = check_parent(parent)
    named = manifest.derived.parent
    if pm.manifest_sha256 != named.manifest_sha256:
        raise TamperedReleaseError(
            f"--parent: {parent / MANIFEST} has seal {str(pm.manifest_sha256)[:12]}…, {release} was derived from "
            f"'{named.name}' with seal {named.manifest_sha256[:12]}… (derived.parent.manifest_sha256)")
    if pm.files[MODEL].sha256 != named.model_sha256:
        raise TamperedReleaseError(
            f"--parent: {parent / MODEL} has sha256 {pm.files[MODEL].sha256[:12]}…, {release} names "
            f"{named.model_sha256[:12]}… (derived.parent.model_sha256)")
    if pm.config_sha256 != manifest.config_sha256:
        raise TamperedReleaseError(f"{release / MANIFEST}: config_sha256 differs from its parent's")
    return pm


def check_derived(release: Path, manifest: Manifest, cfg, data, got, *, parent, parent_manifest, policy,
                  policy_source: str, notes: list[str], signature: str | None, signed: bool, source_weights,
                  scratch: Path, device: str):
    """The policy's gates on a derived release's recomputed numbers (``got``: verify.measure of its
    model.onnx, logits from the shipped file), and whether they reproduce its manifest."""
    from nhle_pipeline.pipeline.data import eval_batch_size
    from nhle_pipeline.pipeline.release.check import ReleaseCheck
    from nhle_pipeline.pipeline.release.check_numbers import (
        REPRODUCE_ATOL,
        accuracy_pairs,
        evidence_pairs,
        export_original,
        recomputed_metrics,
        reproduction_drift,
    )
    from nhle_pipeline.verify.measure import measure_onnx
    from nhle_pipeline.verify.precision import AGREEMENT_MIN, agreement, derived_gates
    from nhle_pipeline.verify.verification import forgotten_logit_spread

    d = manifest.derived
    forget = list(manifest.forget_classes)
    batch = eval_batch_size(cfg.data, data.input_shape)
    ort_device = "cpu" if device == "auto" else device
    notes.append(f"a derived release: {d.precision} of '{d.parent.name}' (model sha256 {d.parent.model_sha256[:12]}…); "
                 f"judged by top-1 agreement with it and by accuracy, not by atol parity")
    recorded = manifest.metrics
    original = None
    if source_weights is not None:
        original_onnx = export_original(cfg, data, manifest, Path(source_weights), scratch)
        original = measure_onnx(original_onnx, manifest.head, data.train, data.test, forget, cfg.model.num_classes,
                                seed=cfg.seed, device=device, batch_size=batch, scratch=scratch)
    metrics, original_from = recomputed_metrics(got, original, recorded, None, notes, "fp32 original")
    pairs = []
    if parent_manifest is not None:
        agree = agreement(release / MODEL, Path(parent) / MODEL, data.test, batch_size=batch, device=ort_device)
        agreement_value = agree.agreement
        pairs.append((agree.agreement, d.agreement))
        notes.append(f"chain: the parent '{parent_manifest.name}' checked (seal, files, provenance) and is the one "
                     f"this release names; agreement recomputed against its model.onnx: {agreement_value:.4f}")
    else:
        agreement_value = d.agreement
        notes.append(f"agreement with the parent {d.agreement:.4f} is the manifest's, not recomputed and the chain "
                     "not checked (pass --parent PARENT_DIR)")
    cwm_applied = cfg.unlearn.cwm.mode != "none"
    spread = forgotten_logit_spread(got.test_logits, forget) if cwm_applied else None
    metrics.update(agreement=agreement_value, forgotten_logit_spread=spread,
                   cwm_in_graph=None if spread is None else bool(spread == 0.0))
    if d.agreement_min != AGREEMENT_MIN:
        notes.append(f"the release was gated at agreement >= {d.agreement_min}; verify applies {AGREEMENT_MIN}")
    pairs += accuracy_pairs(got.accuracy, recorded.unlearned) + evidence_pairs(got.evidence.to_dict(), recorded.evidence.unlearned)
    what = "recomputed per-class accuracy, Acc_F, Acc_R, Ratio_D, probe AUC, MIA-efficacy vs the manifest's"
    if parent_manifest is not None:
        what += " (and the agreement with the parent)"
    if spread is not None and d.forgotten_logit_spread is not None:
        pairs.append((spread, d.forgotten_logit_spread))
    gates = derived_gates(metrics, policy.gates, agreement_min=AGREEMENT_MIN, cwm_applied=cwm_applied,
                          facts={"require_cwm": policy.require_cwm, "reproduction_drift": reproduction_drift(pairs),
                                 "reproduce_atol": REPRODUCE_ATOL, "reproduced": what})
    manifest_gates = dict((manifest.config.get("verify") or {}).get("gates") or {})
    return ReleaseCheck(gates, metrics, got.provider, policy, policy_source, manifest_gates,
                        signature=signature, signed=signed, original_from=original_from, notes=notes)
