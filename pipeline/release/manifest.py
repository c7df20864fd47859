"""The run's manifest: everything needed to audit and reproduce a release, its file
digests and its seal."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import nhle_pipeline.pipeline
from nhle_pipeline.pipeline.checkpoint import sha256_file
from nhle_pipeline.pipeline.config import Config
from nhle_pipeline.pipeline.cwm import Calibration
from nhle_pipeline.pipeline.errors import TamperedReleaseError
from nhle_pipeline.pipeline.release.files import MANIFEST, SCRATCH
from nhle_pipeline.verify.evidence import Evidence
from nhle_pipeline.verify.gates import GateResult
from nhle_pipeline.verify.metrics import Accuracy
from nhle_pipeline.verify.representation import Audit

METHOD = "nhle-cwm"
# sha256 of the manifest's canonical JSON without this key, added at publication:
# `pipeline verify` refuses a manifest edited after release (metrics, thresholds, digests).
MANIFEST_SEAL = "manifest_sha256"


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript
    import sklearn
    import torchvision

    return {
        "pipeline": nhle_pipeline.pipeline.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxscript": onnxscript.__version__,  # torch.onnx's exporter writes the graph with it
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def onnx_provenance(cfg: Config, weights_sha256: str | None, class_names: list[str] | None = None) -> dict[str, str]:
    """What is stamped into model.onnx's metadata_props (no timestamps: builds stay reproducible)."""
    names = {"class_names": json.dumps(class_names)} if class_names else {}
    return {**names,
        "method": METHOD,
        "forget_classes": ",".join(map(str, cfg.forget_ids)),
        "num_classes": str(cfg.model.num_classes),
        "source_model_sha256": weights_sha256 or "",
        "config_sha256": cfg.sha256(),
        "cwm_mode": cfg.unlearn.cwm.mode,
        "nhle_variant": cfg.unlearn.nhle.variant,
        "pipeline_version": nhle_pipeline.pipeline.__version__,
    }


class Record(BaseModel):
    """A part of the manifest: unknown keys are refused; NaN stays NaN in JSON."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class FileDigest(Record):
    sha256: str
    bytes: int


class SourceModel(Record):
    path: str  # model.weights: a file, or a Hugging Face save_pretrained folder
    arch: str
    sha256: str | None  # of the weights file (a folder's model.safetensors)
    # a training wrapper's key prefix removed from the checkpoint's keys (None: none; earlier manifests)
    key_prefix: str | None = None
    # how the logits were taken from the model's output (pipeline/logits_adapter.py): "output.logits"
    # (a ModelOutput), "output['logits']", "output[0]"; None: the forward returns logits
    logits_from: str | None = None






class GapRecord(Record):
    """|unlearned - retrained reference| per metric and their mean (verify.verification.gap_to_reference)."""

    acc_f: float
    acc_r: float
    ratio_d: float
    probe_auc: float
    mia_efficacy: float
    mean: float


class RelearnRecord(Record):
    """verify.relearn.relearn_block as recorded (``verify.evidence.relearn: true``): each model's
    flat figures and curves, the gate's ``steps_relative`` and the seconds it took."""

    original: dict[str, Any]
    unlearned: dict[str, Any]
    steps_relative: float
    seconds: float


class EvidenceBlock(Record):
    original: Evidence
    unlearned: Evidence
    reference: Evidence | None = None
    gap_to_reference: GapRecord | None = None
    relearn: RelearnRecord | None = None  # None: verify.evidence.relearn off (and manifests before it)


class NHLERecord(Record):
    steps: int
    stopped: str
    forget_acc_start: float
    forget_acc_end: float
    n_samples: int
    n_retained_samples: int = 0
    settings: dict[str, Any] | None = None  # the resolved NHLE settings (absent in 0.1 manifests)




class CWMRecord(Record):
    mode: str
    bias: float | None  # the forgotten rows' bias in model.onnx (None: CWM off)
    calibration: Calibration | None = None




class LayerAuditRecord(Record):
    """One layer of the layer-wise audit: each model's audit at that ONNX tensor."""

    layer: str
    original: Audit
    unlearned: Audit
    reference: Audit | None = None
    gap_closed: dict[str, float] | None = None


class RepresentationRecord(LayerAuditRecord):
    """The representation-level audit (verify.representation.representation_block): each model's
    audit at the head's input (the fields it shares with one layer's), the layer-wise audit, the level."""

    layers: list[LayerAuditRecord] = []  # the layer-wise audit ([]: none, or made before it existed)
    n_forget_test: int | None = None  # the forgotten classes' test images LPR_F is a fraction of (None: not recorded)
    level: Literal["none", "output", "representation"]


class Metrics(Record):
    """Every number the gates and the reports use (verify.verification.verification_metrics)."""

    original: Accuracy
    unlearned: Accuracy
    reference: Accuracy | None = None
    acc_f: float
    delta_acc_r: float
    parity_max_abs: float
    parity_samples: int | None = None  # test images the parity ran on (None: 0.2 manifests, all of them)
    evidence_copy_max_abs: float | None = None  # verification copy vs shipped file (None: 0.2 manifests)
    graph_unchanged: bool
    cwm_in_graph: bool | None = None  # None: CWM mode 'none', nothing to look for
    # every forgotten logit proved a constant of the graph and one value over the test split
    # (None: CWM mode 'none', or a manifest written before the check existed)
    output_masked: bool | None = None
    forgotten_logit_spread: float | None = None  # max - min of a forgotten logit over the test split
    # test images predicted as a forgotten class only by a tie with the highest retained logit
    # (verify.verification.forgotten_ties; None: CWM off, or a manifest made before it)
    forgotten_ties: int | None = None
    batch_max_abs: float | None = None  # logits at batch 1 and 3 vs the measuring pass
    evidence: EvidenceBlock
    representation: RepresentationRecord | None = None  # None: written before the audit existed
    # the feature projection stage (pipeline/projection.py, ProjectionResult); None: it was off
    projection: dict[str, Any] | None = None
    nhle: NHLERecord
    cwm: CWMRecord | None = None  # None: 0.2 manifests




class Runtime(Record):
    torch_device: str
    onnxruntime_provider: str
    versions: dict[str, str]
    platform: str


class ParentRecord(Record):
    """The fp32 release a derived release was made from (``pipeline quantize``)."""

    name: str
    manifest_sha256: str  # the parent manifest's seal
    model_sha256: str  # the parent's model.onnx
    acc_r: float  # the parent's Acc_R (its manifest's metrics.unlearned.acc_r)


class DerivedRecord(Record):
    """What makes a release a reduced-precision derivative (pipeline/quantize.py).

    In a derived manifest, ``metrics.unlearned``, ``acc_f``, ``delta_acc_r`` (against the fp32
    original, the parent's ``metrics.original``), ``evidence.unlearned`` and
    ``evidence_copy_max_abs`` are the derivative's own; ``parity_*``, ``graph_unchanged``,
    ``nhle`` and ``cwm`` are the parent's (the unlearning it derives from)."""

    parent: ParentRecord
    precision: Literal["int8-static", "int8-dynamic", "fp16"]
    settings: dict[str, Any]  # the quantization tool and its arguments, as passed
    calibration_samples: int | None = None  # int8-static: training images (seeded subset)
    calibration_seed: int | None = None
    agreement: float  # top-1 agreement with the parent on the test split
    agreement_min: float  # the agreement gate's threshold
    max_abs_logit_diff: float  # vs the parent, finite logits
    agreement_samples: int
    acc_r_vs_parent: float  # Acc_R(derived) - Acc_R(parent)
    forgotten_logit_spread: float | None = None  # None: CWM off


class Manifest(Record):
    """manifest.json: written by the runner, read by both reports and `pipeline verify`."""

    format: int = 1
    name: str
    status: Literal["released", "gate_failed"]
    method: str
    forget_classes: list[int]
    num_classes: int
    # The name of each class id (imagefolder folders, a torchvision set's classes,
    # data.class_names, digits' '0'..'9'); None when the data names none.
    class_names: list[str] | None = None
    seed: int
    config: dict[str, Any]  # the validated config (pipeline.config.Config, as JSON)
    config_sha256: str
    source_model: SourceModel
    head: str
    # every head CWM masked, `head` first (None: the one `head`; manifests before several heads)
    heads: list[str] | None = None
    metrics: Metrics
    gates: list[GateResult]
    passed: bool
    runtime: Runtime
    external_data: list[str] = Field(default_factory=list)
    timings_s: dict[str, float]
    # Whether the original's measurements came from the baseline cache: "hit", "miss"
    # (measured, then cached) or "off" (--no-cache, cache.enabled: false; 0.2 manifests).
    baseline_cache: Literal["hit", "miss", "off"] = "off"
    files: dict[str, FileDigest] = Field(default_factory=dict)  # every other file of the release
    derived: DerivedRecord | None = None  # a reduced-precision derivative (pipeline quantize); None: fp32
    manifest_sha256: str | None = None  # the seal (MANIFEST_SEAL), added at publication

    @property
    def cwm_mode(self) -> str:
        return str(self.config.get("unlearn", {}).get("cwm", {}).get("mode", "unrecorded"))

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON document (NaN kept as NaN; absent seal left out)."""
        out = self.model_dump(mode="json")
        if out.get(MANIFEST_SEAL) is None:
            out.pop(MANIFEST_SEAL, None)
        if out.get("derived") is None:  # an fp32 release's manifest is what it was before derivatives
            out.pop("derived", None)
        return out


def build_manifest(
    cfg: Config,
    *,
    name: str,
    passed: bool,
    weights_sha256: str | None,
    head_name: str,
    heads: list[str] | None = None,
    metrics: dict,
    gates: list[GateResult],
    torch_device: str,
    provider: str,
    external_data: list[str],
    timings: dict[str, float],
    baseline_cache: str = "off",
    class_names: list[str] | None = None,
    key_prefix: str | None = None,
    logits_from: str | None = None,
) -> Manifest:
    return Manifest(
        name=name,
        status="released" if passed else "gate_failed",
        method=METHOD,
        forget_classes=cfg.forget_ids,
        num_classes=cfg.model.num_classes,
        class_names=class_names,
        seed=cfg.seed,
        config=cfg.model_dump(mode="json"),
        config_sha256=cfg.sha256(),
        source_model=SourceModel(path=str(cfg.model.weights), arch=cfg.model.arch, sha256=weights_sha256,
                                 key_prefix=key_prefix, logits_from=logits_from),
        head=head_name,
        heads=heads if heads and heads != [head_name] else None,
        metrics=Metrics.model_validate(metrics),
        gates=list(gates),
        passed=passed,
        runtime=Runtime(torch_device=torch_device, onnxruntime_provider=provider,
                        versions=library_versions(), platform=platform.platform()),
        external_data=external_data,
        timings_s=dict(timings),
        baseline_cache=baseline_cache,
    )


def parse_manifest(data: Any, source: str) -> Manifest:
    """A manifest read from JSON, validated strictly (numbers are numbers, no unknown keys);
    a wrong shape is a ``TamperedReleaseError`` naming the first bad field."""
    if not isinstance(data, dict):
        raise TamperedReleaseError(f"{source}: expected a JSON object, got {type(data).__name__}")
    try:
        return Manifest.model_validate(data, strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise TamperedReleaseError(f"{source}: field '{loc}': {first['msg']}") from e


def load_manifest(folder: Path) -> Manifest:
    """The manifest this process just wrote into ``folder`` (a staging folder after a failed gate)."""
    return Manifest.model_validate_json((folder / MANIFEST).read_text(encoding="utf-8"))


def write_manifest(path: Path, manifest: Manifest) -> None:
    write_json(path, manifest.to_json_dict())


def file_digests(folder: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, dict]:
    """sha256 and size of every file under ``folder`` (relative POSIX paths), scratch excluded."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in exclude and not rel.startswith(SCRATCH + "/"):
            out[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def write_json(path: Path, data: dict) -> None:
    """Write JSON durably: temp file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False, allow_nan=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def manifest_seal(manifest: dict) -> str:
    """sha256 of ``manifest`` as canonical JSON (sorted keys, no spaces), its own seal left out."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_SEAL}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()
    return hashlib.sha256(blob).hexdigest()


def seal_manifest_file(path: Path) -> None:
    """Add the seal to the manifest at ``path`` (if there is one), rewriting it durably."""
    if path.is_file():
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest[MANIFEST_SEAL] = manifest_seal(manifest)
        write_json(path, manifest)
