"""Re-check a release the way a deploy step would before swapping a model in.

The release is untrusted input; the deployer's policy (policy.py) decides
what it must show. In order, each step failing with one line (exit 2) or, for
the gates, a verdict (exit 1):

1. Hygiene: the folder holds only plain files and folders (no symbolic link,
   no device or pipe, anywhere, ``triton/`` included). Nothing is read
   outside it, nothing is written into it.
2. The signature (``release.sig``), when a public key is given or the policy
   requires one: the producer's key signed exactly these files.
3. The manifest: valid, sealed (``manifest_sha256``: catches accidental edits,
   not forgers) and of the manifest's shape.
4. Files: every listed file has its recorded sha256; no file or folder that
   is not listed (empty folders included; only ``release.sig`` may be
   unlisted); only a release's own files (model, reports, external data, the
   Triton repository, whose model is byte-identical to ``model.onnx`` and
   whose ``config.pbtxt`` is the one written from it).
5. Provenance and config: ``model.onnx``'s metadata matches the manifest; the
   manifest's ``config_sha256`` is the sha256 of its config.
6. Recomputed with onnxruntime on ``model.onnx`` and the data named in the
   manifest's config (``data.download`` forced off): per-class accuracy,
   Acc_F, Acc_R, the evidence metrics, ``cwm_in_graph``; with the original's
   weights (``--source-weights``) also the original's numbers, ΔAcc_R against
   them and ``graph_unchanged``. The policy's gates are applied (the
   manifest's own gate settings are shown, never obeyed), and the recomputed
   numbers must reproduce the recorded ones (a NaN on one side only fails).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nhle_pipeline.pipeline.errors import DataError, TamperedReleaseError
from nhle_pipeline.pipeline.release.check_numbers import (
    CALIBRATION_ATOL,
    REPRODUCE_ATOL,
    accuracy_pairs,
    check_batch_independence,
    check_derived_batch_independence,
    check_recorded_gates,
    check_release_weights,
    evidence_pairs,
    export_fresh,
    export_original,
    library_arch,
    measure_release_file,
    recalibrate,
    recomputed_metrics,
    recorded_masked_bias,
    relearn_again,
    reproduction_drift,
)
from nhle_pipeline.pipeline.release.check_structure import (
    check_against_fresh_export,
    check_config,
    check_files,
    check_graph,
    check_layout,
    check_provenance,
    check_source_weights,
    check_verdict,
    read_manifest,
    scan_release,
)
from nhle_pipeline.pipeline.release.files import MANIFEST, MODEL, SIGNATURE, WEIGHTS
from nhle_pipeline.pipeline.release.policy import Policy
from nhle_pipeline.pipeline.release.signing import verify_signature
from nhle_pipeline.verify.gates import RECHECK, GateResult, judge


@dataclass
class ReleaseCheck:
    gates: list[GateResult]
    metrics: dict
    provider: str
    policy: Policy = field(default_factory=Policy)
    policy_source: str = "default gates"
    manifest_gates: dict[str, Any] = field(default_factory=dict)  # the producer's verify.gates: shown, not applied
    signature: str | None = None  # the verified key's fingerprint; None: not checked
    signed: bool = False  # release.sig is present
    original_from: str = "manifest"  # "source weights": the original was measured here
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)



def verify_config(raw: dict, data_root: str | None) -> tuple[dict, list[str]]:
    """The manifest's config as verify uses it: never downloads, never unpickles, never imports code."""
    notes = []
    data = dict(raw.get("data") or {})
    if data.get("download"):
        notes.append("the release's config sets data.download: true; ignored (verify never downloads)")
    data["download"] = False
    if data_root is not None:
        data["root"] = data_root
    model = dict(raw.get("model") or {})
    model["trust_pickle"] = False
    if "trust_code" in model:
        model["trust_code"] = False
    return {**raw, "data": data, "model": model}, notes



def verify_release(
    release: str | Path,
    *,
    data_root: str | None = None,
    device: str = "auto",
    policy: Policy | None = None,
    policy_source: str = "default gates",
    public_key: str | Path | None = None,
    source_weights: str | Path | None = None,
    parent: str | Path | None = None,
) -> ReleaseCheck:
    """Hygiene, signature, checksums, provenance, then the policy's gates on the shipped model.onnx.

    A derived release (``pipeline quantize``) is judged by pipeline/release/derived.py; ``parent``:
    its fp32 parent release, checked and matched to the one the derived manifest names."""
    import tempfile

    from nhle_pipeline.pipeline.config import parse_config
    from nhle_pipeline.pipeline.errors import InputError
    from nhle_pipeline.pipeline.loading import class_names_for, load_data
    from nhle_pipeline.verify.graph import rows_masked

    policy = policy or Policy()
    rel = Path(release)
    public_key = public_key or policy.public_key
    if policy.require_signature and public_key is None:
        raise InputError("--public-key: the policy requires a signature; give the producer's public key")
    if policy.gates.require_representation and public_key is None:
        raise InputError("gates.require_representation: the level is judged against the producer's retrained "
                         "reference, which verify does not retrain: the policy needs the producer's signature "
                         "(require_signature: true and --public-key)")
    if policy.require_source_weights and source_weights is None:
        raise InputError("--source-weights: the policy requires the original model's weights to measure ΔAcc_R")

    tree = scan_release(rel)
    fingerprint = verify_signature(rel, public_key) if public_key is not None else None
    manifest = read_manifest(rel)
    check_files(rel, manifest, tree)
    check_layout(rel, manifest)
    check_provenance(rel, manifest)
    check_config(rel, manifest)
    check_verdict(rel, manifest)
    derived = manifest.derived is not None
    check_graph(rel, derived)
    if derived or parent is not None:
        from nhle_pipeline.pipeline.release.derived import check_chain

        parent_manifest = check_chain(rel, manifest, parent)

    raw, notes = verify_config(manifest.config, data_root)
    cfg = parse_config(raw, f"{rel / MANIFEST} config")
    if source_weights is not None:
        check_source_weights(manifest, cfg, Path(source_weights))
    forget = cfg.forget_ids
    n = cfg.model.num_classes
    # verify writes nothing that outlives it: npz extraction, the feature copy and the
    # original's export go to a temp folder
    with tempfile.TemporaryDirectory(prefix="pipeline-verify-") as tmp:
        scratch = Path(tmp)
        try:
            data = load_data(cfg, cache_dir=scratch)
        except DataError as e:
            raise DataError(f"{e} (pipeline verify never downloads; point --data-root at a local copy)") from e
        names = class_names_for(cfg, data)
        if manifest.class_names is not None and names is not None and names != manifest.class_names:
            raise DataError(f"the evaluation data's class names {names} differ from the release's "
                            f"{manifest.class_names}: class ids would not mean the same classes")
        # the layer-wise audit is recomputed at the tensors the manifest names (fp32 releases)
        rep_record = manifest.metrics.representation
        layers = [r.layer for r in rep_record.layers] if rep_record is not None and not derived else []
        got = measure_release_file(rel / MODEL, manifest, data, forget, n, cfg, layers, scratch, shipped_logits=derived,
                        device="cpu" if derived and device == "auto" else device)
        recalibrated = None
        if cfg.unlearn.cwm.mode == "calibrated" and not derived:
            recalibrated = recalibrate(rel / MODEL, cfg, data, device)
        if derived:
            from nhle_pipeline.pipeline.release.derived import check_derived

            check_derived_batch_independence(rel, data, got, forget, "cpu" if device == "auto" else device)

            return check_derived(rel, manifest, cfg, data, got, parent=parent, parent_manifest=parent_manifest,
                                 policy=policy, policy_source=policy_source, notes=notes, signature=fingerprint,
                                 signed=SIGNATURE in tree.files, source_weights=source_weights, scratch=scratch,
                                 device=device)
        original = graph_unchanged = None
        if source_weights is not None:
            original_onnx = export_original(cfg, data, manifest, Path(source_weights), scratch)
            original = measure_release_file(original_onnx, manifest, data, forget, n, cfg, layers, scratch, device=device)
            graph_unchanged = check_against_fresh_export(rel, original_onnx, manifest, signed=fingerprint is not None,
                                                         notes=notes)
        elif ":" not in cfg.model.arch or library_arch(cfg.model.arch):  # registry or library: export it here
            graph_unchanged = check_against_fresh_export(rel, export_fresh(cfg, data, manifest, scratch), manifest,
                                                         signed=fingerprint is not None, notes=notes)
        else:
            notes.append(f"graph not compared with a fresh export: model.arch '{cfg.model.arch}' imports code, "
                         "which verify never runs")
        batch_max_abs = check_batch_independence(rel, data, got, forget, policy.gates.parity_atol, device)
        shipped_torch = relearned = None
        if WEIGHTS in manifest.files:
            shipped_torch = check_release_weights(rel, cfg, data, manifest, got, forget, policy.gates.parity_atol, notes)
        if manifest.metrics.evidence.relearn is not None:  # the run measured relearning: measure it again
            if shipped_torch is not None and source_weights is not None:
                relearned = relearn_again(cfg, data, manifest, shipped_torch, Path(source_weights), notes)
            else:
                notes.append("relearning not recomputed: it needs the shipped PyTorch weights (model.safetensors, "
                             "an architecture verify builds) and the original's (--source-weights)")

    recorded = manifest.metrics
    metrics, original_from = recomputed_metrics(got, original, recorded, graph_unchanged, notes)
    after, ev_before = got.accuracy, metrics["evidence"]["original"]
    mode = cfg.unlearn.cwm.mode
    metrics["batch_max_abs"] = batch_max_abs
    if mode != "none":
        from nhle_pipeline.verify.output_masking import forgotten_logits_constant
        from nhle_pipeline.verify.verification import forgotten_logit_spread

        spread = metrics["forgotten_logit_spread"] = forgotten_logit_spread(got.test_logits, forget)
        metrics["output_masked"] = bool(forgotten_logits_constant(rel / MODEL, forget) and spread == 0.0)
    from nhle_pipeline.pipeline.release.check_representation import reaudit

    rep = reaudit(recorded.representation, recorded.evidence, got, original, data, forget, cfg.seed,
                  metrics.get("output_masked"), notes)
    if rep.block is None and policy.gates.require_representation:
        raise InputError(f"gates.require_representation: the policy requires the representation level; {rel} "
                         "records no representation audit")
    if rep.block is not None:
        metrics["representation"] = rep.block
        if rep.block["level"] != recorded.representation.level:
            raise TamperedReleaseError(f"{rel / MANIFEST}: records forgetting level '{recorded.representation.level}', "
                                       f"its numbers give '{rep.block['level']}'")
    facts: dict = {"require_cwm": policy.require_cwm, "fresh_export_unchanged": graph_unchanged}  # the gates' inputs
    if relearned is not None:
        metrics["evidence"]["relearn"] = relearned
        facts["relearn_recomputed"] = relearned["steps_relative"]
    if mode != "none":
        bias, facts["bias_whence"] = recorded_masked_bias(cfg, manifest)
        masked = None
        if bias is not None:
            try:
                masked = all(rows_masked(rel / MODEL, h, forget, bias) for h in (manifest.heads or [manifest.head]))
            except (IndexError, ValueError) as e:
                raise TamperedReleaseError(f"{rel / MODEL}: the head '{manifest.head}' does not fit the manifest ({e})") from e
        metrics["cwm_in_graph"] = masked
    if recalibrated is not None:
        record = manifest.metrics.cwm.calibration if manifest.metrics.cwm is not None else None
        metrics["cwm_calibration_gap"] = math.inf if record is None else abs(recalibrated.bias - record.bias)
        facts.update(recalibrated=recalibrated, calibration_atol=CALIBRATION_ATOL * max(1.0, abs(recalibrated.bias)))

    pairs = accuracy_pairs(after, recorded.unlearned) + evidence_pairs(got.evidence.to_dict(), recorded.evidence.unlearned)
    what = "recomputed per-class accuracy, Acc_F, Acc_R, Ratio_D, probe AUC, MIA-efficacy vs the manifest's"
    if original is not None:
        pairs += accuracy_pairs(original.accuracy, recorded.original)
        pairs += evidence_pairs(ev_before, recorded.evidence.original)
        what += " (the original's too)"
    if rep.pairs:
        pairs += rep.pairs
        what += f"; representation audit: {rep.what}"
    facts.update(reproduction_drift=reproduction_drift(pairs), reproduce_atol=REPRODUCE_ATOL, reproduced=what)
    gates = judge(RECHECK, metrics, policy.gates, cwm_applied=mode != "none", facts=facts)
    check_recorded_gates(rel, manifest, gates)
    manifest_gates = dict((manifest.config.get("verify") or {}).get("gates") or {})
    return ReleaseCheck(gates, metrics, got.provider, policy, policy_source, manifest_gates,
                        signature=fingerprint, signed=SIGNATURE in tree.files, original_from=original_from, notes=notes)
