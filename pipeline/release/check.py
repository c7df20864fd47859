"""Re-check a release the way a deploy step would before swapping a model in.

1. Every file listed in ``manifest.json`` exists with its recorded sha256, and
   no unlisted file was added.
2. The provenance in ``model.onnx`` (read by onnxruntime) matches the manifest.
3. Accuracy and the evidence metrics (Ratio_D, probe AUC, MIA-efficacy),
   recomputed with onnxruntime on ``model.onnx`` and the data named in the
   manifest's config; the gates are applied against the original's recorded
   values, and the recomputed numbers must reproduce the recorded ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from nhle_pipeline.pipeline.errors import ReleaseError, TamperedReleaseError
from nhle_pipeline.pipeline.release.manifest import (
    MANIFEST,
    MANIFEST_SEAL,
    Manifest,
    file_digests,
    manifest_seal,
    parse_manifest,
)
from nhle_pipeline.verify.gates import GateResult, evaluate_gates

# Recomputed metrics may differ from the recorded ones only by float noise
# (probe and attack fits are seeded); one test sample's worth is far above this.
REPRODUCE_ATOL = 1e-4


@dataclass
class ReleaseCheck:
    gates: list[GateResult]
    metrics: dict
    provider: str

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def read_manifest(release: Path) -> Manifest:
    """The release's manifest: valid JSON, sealed, and of the manifest's shape (else tampered)."""
    path = release / MANIFEST
    if not release.is_dir():
        raise ReleaseError(f"{release}: no such release folder")
    if not path.is_file():
        raise ReleaseError(f"{path}: missing; not a release folder")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TamperedReleaseError(f"{path}: not valid JSON ({e})") from e
    for key in ("files", "config", "metrics", "forget_classes", "config_sha256"):
        if not isinstance(m, dict) or key not in m:
            raise TamperedReleaseError(f"{path}: missing field '{key}'")
    if m.get(MANIFEST_SEAL) != manifest_seal(m):
        raise TamperedReleaseError(f"{path}: edited after release ('{MANIFEST_SEAL}' does not match its contents)")
    # A re-sealed (forged) manifest must still not crash the checks below: its shape is checked too.
    return parse_manifest(m, str(path))


def check_files(release: Path, manifest: Manifest) -> None:
    """Checksums of every listed file; extra or missing files are tampering too."""
    actual = file_digests(release)
    listed = {k: v.model_dump() for k, v in manifest.files.items()}
    for name in sorted(set(listed) | set(actual)):
        if name not in actual:
            raise TamperedReleaseError(f"{release / name}: listed in the manifest but missing")
        if name not in listed:
            raise TamperedReleaseError(f"{release / name}: not listed in the manifest")
        if actual[name]["sha256"] != listed[name]["sha256"]:
            raise TamperedReleaseError(f"{release / name}: sha256 differs from the manifest; the release was modified")


def check_provenance(release: Path, manifest: Manifest) -> None:
    from nhle_pipeline.verify.ort import read_metadata

    meta = read_metadata(release / "model.onnx")
    expect = {
        "config_sha256": manifest.config_sha256,
        "forget_classes": ",".join(map(str, manifest.forget_classes)),
    }
    for k, v in expect.items():
        if meta.get(k) != v:
            raise TamperedReleaseError(f"{release / 'model.onnx'}: metadata '{k}' is {meta.get(k)!r}, manifest says {v!r}")


def verify_release(release: str | Path, *, data_root: str | None = None, device: str = "auto") -> ReleaseCheck:
    """Checksums, provenance, then the accuracy gates on the shipped model.onnx."""
    import tempfile

    from nhle_pipeline.pipeline.config import parse_config
    from nhle_pipeline.pipeline.loading import load_data
    from nhle_pipeline.verify.measure import measure_onnx

    rel = Path(release)
    manifest = read_manifest(rel)
    check_files(rel, manifest)
    check_provenance(rel, manifest)

    raw = manifest.config
    if data_root is not None:
        raw = {**raw, "data": {**raw["data"], "root": data_root}}
    cfg = parse_config(raw, f"{rel / MANIFEST} config")
    forget = list(cfg.forget.classes)
    # verify writes nothing that outlives it: npz extraction and the feature copy go to a temp folder
    with tempfile.TemporaryDirectory(prefix="pipeline-verify-") as scratch:
        data = load_data(cfg, cache_dir=Path(scratch))
        got = measure_onnx(
            rel / "model.onnx", manifest.head, data.train, data.test, forget, cfg.model.num_classes,
            seed=cfg.seed, device=device, batch_size=cfg.data.batch_size, scratch=Path(scratch),
        )
    after = got.accuracy
    recorded = manifest.metrics
    metrics = {
        "acc_f": after.acc_f,
        "delta_acc_r": after.acc_r - recorded.original.acc_r,
        "unlearned": after.to_dict(),
        "evidence_copy_max_abs": got.copy_max_abs,
        "evidence": {"original": recorded.evidence.original.model_dump(), "unlearned": got.evidence.to_dict()},
    }
    gates = evaluate_gates(metrics, cfg.verify.gates, with_parity=False)
    pairs = [(after.acc_f, recorded.unlearned.acc_f), (after.acc_r, recorded.unlearned.acc_r)]
    recorded_ev = recorded.evidence.unlearned.model_dump()
    for key in ("ratio_d", "probe_auc", "mia_efficacy"):
        pairs.append((metrics["evidence"]["unlearned"][key], recorded_ev[key]))
    drift = max(abs(a - b) if not (math.isnan(a) and math.isnan(b)) else 0.0 for a, b in pairs)
    gates.append(GateResult(
        "reproduces_manifest", drift, REPRODUCE_ATOL, "<=", bool(math.isfinite(drift) and drift <= REPRODUCE_ATOL),
        "recomputed Acc_F, Acc_R, Ratio_D, probe AUC, MIA-efficacy vs the manifest's",
    ))
    provider = got.provider
    return ReleaseCheck(gates, metrics, provider)
