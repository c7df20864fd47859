"""``pipeline quantize``: a reduced-precision *derived release* of an fp32 release.

    parent check ─► calibration data ─► derive (onnxruntime's tools) ─► measure ─► gates ─► release

The parent is untrusted input like any release: its folder hygiene, seal,
files, layout, provenance and config are checked (pipeline/release/check_structure.py)
before anything is written. The derivative is made by onnxruntime's own tools
(export/precision.py); INT8-static calibrates on a seeded subset of the
training split the parent's config names. It is then measured by onnxruntime
exactly as a release is (verify/measure.py: accuracy from the shipped file,
evidence from its features) and gated (verify/precision.py): Acc_F, ΔAcc_R
against the fp32 original, the optional evidence gates of the parent's config,
top-1 agreement with the parent, and masked rows seen in the output. The
release machinery is the run's: staging folder, reports, Triton repository,
sealed manifest (with a ``derived`` record naming the parent), optional
signature, atomic publication. A failed gate leaves the staging folder with its
report and releases nothing (exit 1); any other failure or an interruption
removes the staging folder.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nhle_pipeline.pipeline.errors import GateFailure, InputError
from nhle_pipeline.pipeline.release.files import MODEL

DEFAULT_CALIBRATION_SAMPLES = 512  # training images the INT8-static calibrator sees (seeded subset)


@dataclass
class QuantizeResult:
    manifest: object  # pipeline.release.manifest.Manifest
    path: Path


def check_arguments(parent: Path, mode: str, out: Path, calibration_samples: int, agreement_min: float,
                    force: bool) -> Path:
    """Every argument checked before any work (one line each, exit 2); returns the target folder."""
    from nhle_pipeline.export.precision import MODES
    from nhle_pipeline.pipeline.config import RELEASE_NAME_PATTERN
    from nhle_pipeline.pipeline.release.staging import check_target

    if mode not in MODES:
        raise InputError(f"--mode: '{mode}' is not one of {', '.join(MODES)}")
    if isinstance(calibration_samples, bool) or not isinstance(calibration_samples, int) or calibration_samples < 1:
        raise InputError(f"--calibration-samples: {calibration_samples!r}; expected a whole number >= 1")
    if not (0.0 < agreement_min <= 1.0):
        raise InputError(f"--agreement-min: {agreement_min!r}; expected a number in (0, 1]")
    if not RELEASE_NAME_PATTERN.match(out.name):
        raise InputError(f"--out: '{out.name}' is not a safe release name (letters, digits, '.', '_', '-')")
    p, o = parent.resolve(), out.resolve()
    if o == p or p in o.parents or o in p.parents:
        raise InputError(f"--out: '{out}' overlaps the parent release '{parent}'; give a folder beside it")
    return check_target(out.parent, out.name, force)


def quantize_release(
    parent: str | Path,
    mode: str,
    out: str | Path,
    *,
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    agreement_min: float | None = None,
    force: bool = False,
    sign_key: str | Path | None = None,
    data_root: str | None = None,
    device: str = "cpu",
) -> QuantizeResult:
    """Make, measure, gate and (if every gate passes) release the ``mode`` derivative of ``parent``
    at ``out``; raise ``GateFailure`` (staging kept, nothing released) otherwise."""
    from nhle_pipeline.pipeline.checkpoint import sha256_file
    from nhle_pipeline.pipeline.config import parse_config
    from nhle_pipeline.pipeline.release.check import verify_config
    from nhle_pipeline.pipeline.release.derived import check_parent
    from nhle_pipeline.pipeline.release.signing import load_signing_key
    from nhle_pipeline.verify.precision import AGREEMENT_MIN

    parent, out = Path(parent), Path(out)
    agreement_min = AGREEMENT_MIN if agreement_min is None else agreement_min
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    target = check_arguments(parent, mode, out, calibration_samples, agreement_min, force)
    signer = load_signing_key(sign_key, "--sign-key") if sign_key else None
    pm = check_parent(parent)
    raw, _ = verify_config(pm.config, data_root)  # never downloads, unpickles or imports code
    cfg = parse_config(raw, f"{parent / 'manifest.json'} config")
    parent_model_sha = sha256_file(parent / MODEL)
    with tempfile.TemporaryDirectory(prefix="pipeline-quantize-") as tmp:
        from nhle_pipeline.pipeline.loading import load_data

        data = load_data(cfg, cache_dir=Path(tmp))
        timings["load"] = round(time.perf_counter() - t0, 3)
        return _derive_and_release(parent, pm, parent_model_sha, cfg, data, mode, target, calibration_samples,
                                   agreement_min, force, signer, device, timings)


def _derive_and_release(parent, pm, parent_model_sha, cfg, data, mode, target, calibration_samples,
                        agreement_min, force, signer, device, timings) -> QuantizeResult:
    import numpy as np

    from nhle_pipeline.export.metadata import stamp_metadata
    from nhle_pipeline.export.onnx_file import check_onnx
    from nhle_pipeline.export.precision import INT8_STATIC, derive
    from nhle_pipeline.pipeline.data import eval_batch_size
    from nhle_pipeline.pipeline.release.files import SCRATCH
    from nhle_pipeline.pipeline.release.manifest import (
        DerivedRecord,
        Metrics,
        ParentRecord,
        Runtime,
        library_versions,
    )
    from nhle_pipeline.pipeline.release.package import write_release_files
    from nhle_pipeline.pipeline.release.staging import create_staging, discard_staging, publish
    from nhle_pipeline.pipeline.release.triton import KIND_GPU, KINDS, write_triton_repository
    from nhle_pipeline.verify.evidence import subsample
    from nhle_pipeline.verify.measure import measure_onnx
    from nhle_pipeline.verify.ort import read_metadata
    from nhle_pipeline.verify.precision import agreement, derived_gates
    from nhle_pipeline.verify.verification import forgotten_logit_spread, gap_to_reference

    forget = list(pm.forget_classes)
    batch = eval_batch_size(cfg.data, data.input_shape)
    staging = create_staging(target.parent, target.name)  # the first write
    try:
        model = staging / MODEL

        t = time.perf_counter()
        calibration = None
        idx = None
        if mode == INT8_STATIC:
            idx = subsample(len(data.train), calibration_samples, cfg.seed)
            calibration = data.train.image_batches(idx, batch)
        settings = derive(parent / MODEL, model, mode, calibration)
        meta = {k: v for k, v in read_metadata(parent / MODEL).items() if k != "producer"}
        stamp_metadata(model, {**meta, "precision": mode, "parent_model_sha256": parent_model_sha})
        check_onnx(model)
        tri = cfg.release.triton  # the parent's Triton settings: the same serving contract
        if (pm.config.get("release") or {}).get("triton") is None:  # a 0.3 parent: as 0.3 wrote it
            write_triton_repository(staging, target.name, model, instance_kind=KIND_GPU)
        else:
            write_triton_repository(staging, target.name, model, max_batch_size=tri.max_batch_size,
                                    instance_kind=KINDS[tri.kind], instance_count=tri.instances,
                                    class_names=getattr(pm, "class_names", None))
        timings["derive"] = round(time.perf_counter() - t, 3)

        t = time.perf_counter()
        ort_device = "cpu" if device == "auto" else device
        got = measure_onnx(model, pm.head, data.train, data.test, forget, cfg.model.num_classes, seed=cfg.seed,
                           device=ort_device, batch_size=batch, scratch=staging / SCRATCH, shipped_logits=True)
        agree = agreement(model, parent / MODEL, data.test, batch_size=batch, device=ort_device)
        timings["verify"] = round(time.perf_counter() - t, 3)

        rec = pm.metrics
        after = got.accuracy
        ev_after = got.evidence.to_dict()
        spread = forgotten_logit_spread(got.test_logits, forget) if cfg.unlearn.cwm.mode != "none" else None
        evidence = rec.evidence.model_dump()
        evidence["unlearned"] = ev_after
        if rec.reference is not None and evidence.get("reference"):
            mine = {"acc_f": after.acc_f, "acc_r": after.acc_r, **ev_after}
            ref = {"acc_f": rec.reference.acc_f, "acc_r": rec.reference.acc_r, **evidence["reference"]}
            evidence["gap_to_reference"] = gap_to_reference(mine, ref)
        metrics = {
            **rec.model_dump(),
            "unlearned": after.to_dict(),
            "acc_f": after.acc_f,
            "delta_acc_r": after.acc_r - rec.original.acc_r,  # against the fp32 original
            "evidence_copy_max_abs": got.copy_max_abs,
            "evidence": evidence,
            "cwm_in_graph": None if spread is None else bool(spread == 0.0),
        }
        gates = derived_gates({**metrics, "agreement": agree.agreement, "forgotten_logit_spread": spread},
                              cfg.verify.gates, agreement_min=agreement_min, cwm_applied=spread is not None)
        passed = all(g.passed for g in gates)
        derived = DerivedRecord(
            parent=ParentRecord(name=pm.name, manifest_sha256=pm.manifest_sha256, model_sha256=parent_model_sha,
                                acc_r=rec.unlearned.acc_r),
            precision=mode, settings=settings,
            calibration_samples=None if idx is None else int(len(idx)),
            calibration_seed=None if idx is None else cfg.seed,
            agreement=agree.agreement, agreement_min=agreement_min, max_abs_logit_diff=agree.max_abs_logit_diff,
            agreement_samples=agree.samples, acc_r_vs_parent=after.acc_r - rec.unlearned.acc_r,
            forgotten_logit_spread=spread,
        )
        manifest = pm.model_copy(update={
            "name": target.name, "status": "released" if passed else "gate_failed", "passed": passed,
            "metrics": Metrics.model_validate(metrics), "gates": list(gates),
            "runtime": Runtime(torch_device="none (a derived release: no PyTorch model)",
                               onnxruntime_provider=got.provider, versions=library_versions(),
                               platform=platform.platform()),
            "external_data": [], "timings_s": dict(timings), "baseline_cache": "off", "files": {},
            "derived": derived, "manifest_sha256": None,
        })
        features = {f"{mode} (this release)": (got.test_features, np.asarray(data.test.y)[got.test_idx])}
        write_release_files(staging, manifest, features)
        if not passed:
            failed = [g.name for g in gates if not g.passed]
            raise GateFailure(f"gate(s) failed: {', '.join(failed)}; nothing released", str(staging), manifest)
        path = publish(staging, target, force, sign_key=signer)
        return QuantizeResult(manifest, path)
    except GateFailure:
        raise  # the staging folder keeps the report that says why
    except BaseException:  # an error, Ctrl-C, SIGTERM, a full disk: nothing half-made stays
        discard_staging(staging)
        raise
