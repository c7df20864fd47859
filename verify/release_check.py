"""Re-check a release the way a deploy step would before swapping a model in.

1. Every file listed in ``manifest.json`` exists with its recorded sha256, and
   no unlisted file was added.
2. The provenance in ``model.onnx`` (read by onnxruntime) matches the manifest.
3. The accuracy gates, recomputed with onnxruntime on ``model.onnx`` and the
   data named in the manifest's config, against the original's recorded Acc_R;
   the recomputed metrics must reproduce the recorded ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ReleaseError, TamperedReleaseError
from pipeline.release import MANIFEST, file_digests
from verify.gates import GateResult, evaluate_gates

# Recomputed accuracy may differ from the recorded one only by float noise
# between providers; a count of one test sample is far above this.
REPRODUCE_ATOL = 1e-6


@dataclass
class ReleaseCheck:
    gates: list[GateResult]
    metrics: dict
    provider: str

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def read_manifest(release: Path) -> dict:
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
    return m


def check_files(release: Path, manifest: dict) -> None:
    """Checksums of every listed file; extra or missing files are tampering too."""
    actual = file_digests(release)
    listed = manifest["files"]
    for name in sorted(set(listed) | set(actual)):
        if name not in actual:
            raise TamperedReleaseError(f"{release / name}: listed in the manifest but missing")
        if name not in listed:
            raise TamperedReleaseError(f"{release / name}: not listed in the manifest")
        if actual[name]["sha256"] != listed[name]["sha256"]:
            raise TamperedReleaseError(f"{release / name}: sha256 differs from the manifest; the release was modified")


def check_provenance(release: Path, manifest: dict) -> None:
    from export.metadata import read_metadata

    meta = read_metadata(release / "model.onnx")
    expect = {
        "config_sha256": manifest["config_sha256"],
        "forget_classes": ",".join(map(str, manifest["forget_classes"])),
    }
    for k, v in expect.items():
        if meta.get(k) != v:
            raise TamperedReleaseError(f"{release / 'model.onnx'}: metadata '{k}' is {meta.get(k)!r}, manifest says {v!r}")


def verify_release(release: str | Path, *, data_root: str | None = None, device: str = "auto") -> ReleaseCheck:
    """Checksums, provenance, then the accuracy gates on the shipped model.onnx."""
    from pipeline.config import parse_config
    from pipeline.loading import load_data
    from verify.metrics import accuracy
    from verify.ort import open_session, ort_logits

    rel = Path(release)
    manifest = read_manifest(rel)
    check_files(rel, manifest)
    check_provenance(rel, manifest)

    raw = manifest["config"]
    if data_root is not None:
        raw = {**raw, "data": {**raw["data"], "root": data_root}}
    cfg = parse_config(raw, f"{rel / MANIFEST} config")
    data = load_data(cfg)
    sess, provider = open_session(rel / "model.onnx", device)
    logits = ort_logits(sess, data.test.x, cfg.data.batch_size)
    after = accuracy(logits, data.test.y, cfg.forget.classes, cfg.model.num_classes)
    recorded = manifest["metrics"]
    before_acc_r = recorded["original"]["acc_r"]
    metrics = {"acc_f": after.acc_f, "delta_acc_r": after.acc_r - before_acc_r, "unlearned": after.to_dict()}
    gates = evaluate_gates(metrics, cfg.verify.gates, with_parity=False)
    drift = max(abs(after.acc_f - recorded["unlearned"]["acc_f"]), abs(after.acc_r - recorded["unlearned"]["acc_r"]))
    gates.append(GateResult(
        "reproduces_manifest", drift, REPRODUCE_ATOL, "<=", bool(math.isfinite(drift) and drift <= REPRODUCE_ATOL),
        "recomputed Acc_F/Acc_R vs the manifest's",
    ))
    return ReleaseCheck(gates, metrics, provider)
