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

import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from nhle_pipeline.pipeline.errors import DataError, ModelError, ReleaseError, TamperedReleaseError
from nhle_pipeline.pipeline.jsonio import loads as _strict_json
from nhle_pipeline.pipeline.release.files import MANIFEST, MODEL, REPORTS, SIGNATURE, WEIGHTS
from nhle_pipeline.pipeline.release.manifest import (
    MANIFEST_SEAL,
    Manifest,
    manifest_seal,
    parse_manifest,
)
from nhle_pipeline.pipeline.release.policy import Policy
from nhle_pipeline.pipeline.release.signing import verify_signature
from nhle_pipeline.verify.gates import GateResult, evaluate_gates, gate_result

# Recomputed metrics may differ from the recorded ones only by float noise
# (probe and attack fits are seeded); one test sample's worth is far above this.
REPRODUCE_ATOL = 1e-4


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


# --- 1. hygiene -----------------------------------------------------------------------------------


@dataclass
class Tree:
    """What a release folder holds: relative POSIX paths of its plain files and folders."""

    files: set[str]
    dirs: set[str]


def scan_release(release: Path) -> Tree:
    """Walk ``release`` without following links; a symlink or a special file anywhere is tampering."""
    if release.is_symlink():  # the folder itself too: what is checked must be what is deployed
        raise TamperedReleaseError(f"{release}: a symbolic link; give the release folder itself (refused, not followed)")
    if not release.is_dir():
        raise ReleaseError(f"{release}: no such release folder")
    files: set[str] = set()
    dirs: set[str] = set()
    todo = [release]
    while todo:
        folder = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            raise ReleaseError(f"{folder}: cannot list it ({e.strerror})") from e
        for entry in entries:
            path = Path(entry.path)
            rel = path.relative_to(release).as_posix()
            if entry.is_symlink():
                raise TamperedReleaseError(
                    f"{path}: a symbolic link; a release holds only plain files and folders (refused, not followed)"
                )
            st = entry.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                dirs.add(rel)
                todo.append(path)
            elif stat.S_ISREG(mode):
                if st.st_nlink > 1:  # another name, outside the release, could change it once checked
                    raise TamperedReleaseError(f"{path}: has {st.st_nlink} hard links; a release's files must be "
                                               "its own (copy it, do not link it)")
                files.add(rel)
            else:
                raise TamperedReleaseError(f"{path}: not a plain file (a device, pipe or socket); refused")
    return Tree(files, dirs)


# --- 3. the manifest ------------------------------------------------------------------------------


def read_manifest(release: Path) -> Manifest:
    """The release's manifest: valid JSON, sealed, and of the manifest's shape (else tampered)."""
    path = release / MANIFEST
    if not release.is_dir():
        raise ReleaseError(f"{release}: no such release folder")
    if path.is_symlink():
        raise TamperedReleaseError(f"{path}: a symbolic link; a release holds only plain files and folders")
    if not path.is_file():
        raise ReleaseError(f"{path}: missing; not a release folder")
    from nhle_pipeline.pipeline.release.staging import not_released_problem

    staging = not_released_problem(release)
    if staging:
        raise TamperedReleaseError(f"{release}: {staging}")
    try:
        m = _strict_json(path.read_text(encoding="utf-8"), allow_nan=True)  # duplicate keys, huge numbers: refused
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TamperedReleaseError(f"{path}: not valid JSON ({e})") from e
    except RecursionError as e:  # nested deeper than the parser's stack
        raise TamperedReleaseError(f"{path}: nested too deeply to be a manifest") from e
    for key in ("files", "config", "metrics", "forget_classes", "config_sha256"):
        if not isinstance(m, dict) or key not in m:
            raise TamperedReleaseError(f"{path}: missing field '{key}'")
    if m.get("status") == "gate_failed" and MANIFEST_SEAL not in m:
        raise TamperedReleaseError(f"{release}: a failed run's staging folder (status gate_failed), not a release")
    if m.get(MANIFEST_SEAL) != manifest_seal(m):
        raise TamperedReleaseError(f"{path}: edited after release ('{MANIFEST_SEAL}' does not match its contents)")
    # A re-sealed (forged) manifest must still not crash the checks below: its shape is checked too.
    return parse_manifest(m, str(path))


# --- 4. files -------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    from nhle_pipeline.pipeline.checkpoint import sha256_file

    return sha256_file(path)


def check_files(release: Path, manifest: Manifest, tree: Tree | None = None) -> None:
    """Checksums of every listed file; a missing, unlisted or extra file or folder is tampering.

    Only ``manifest.json`` and ``release.sig`` are not listed (the manifest cannot list itself,
    and the signature is made after it)."""
    tree = tree or scan_release(release)
    actual = tree.files - {MANIFEST, SIGNATURE}
    listed = manifest.files
    for name in sorted(set(listed) | actual):
        if name not in actual:
            raise TamperedReleaseError(f"{release / name}: listed in the manifest but missing")
        if name not in listed:
            raise TamperedReleaseError(f"{release / name}: not listed in the manifest")
        if _sha256(release / name) != listed[name].sha256:
            raise TamperedReleaseError(f"{release / name}: sha256 differs from the manifest; the release was modified")
    needed = {str(p) for name in listed for p in PurePosixPath(name).parents if str(p) != "."}
    for d in sorted(tree.dirs - needed):
        raise TamperedReleaseError(f"{release / d}: a folder no listed file is in (not part of the release)")


def _external_locations(model_path: Path) -> list[str]:
    """The external data files ``model_path`` refers to, each a plain name inside the release."""
    from nhle_pipeline.export.onnx_file import external_data_locations, load_onnx

    found = external_data_locations(load_onnx(model_path, weights=False))
    for loc in found:
        p = PurePosixPath(loc.replace("\\", "/"))
        if not loc or p.is_absolute() or ".." in p.parts or len(p.parts) != 1 or ":" in loc:
            raise TamperedReleaseError(
                f"{model_path}: external data location {loc!r} is not a file beside the model (refused, not read)"
            )
    return found


def check_layout(release: Path, manifest: Manifest) -> None:
    """Only a release's own files, and a Triton repository that serves exactly ``model.onnx``."""
    from nhle_pipeline.pipeline.release.files import TRITON_DIR
    from nhle_pipeline.pipeline.release.triton import (
        CONFIG_FILE,
        LABELS_FILE,
        MODEL_FILE,
        MODEL_VERSION,
        graph_signature,
        labels_text,
        triton_config_problem,
    )

    listed = set(manifest.files)
    if MODEL not in listed:
        raise TamperedReleaseError(f"{release / MODEL}: not listed in the manifest; a release ships its model")
    external = _external_locations(release / MODEL)
    for name in external:
        if name not in listed:
            raise TamperedReleaseError(f"{release / MODEL}: external data file '{name}' is not a listed file")
    if sorted(external) != sorted(manifest.external_data):
        raise TamperedReleaseError(
            f"{release / MANIFEST}: external_data {manifest.external_data} differs from what model.onnx refers to {external}"
        )
    model_dir = f"{TRITON_DIR}/{manifest.name}"
    triton = {f"{model_dir}/{CONFIG_FILE}", f"{model_dir}/{MODEL_VERSION}/{MODEL_FILE}"}
    triton |= {f"{model_dir}/{MODEL_VERSION}/{name}" for name in external}
    class_names = getattr(manifest, "class_names", None)
    if class_names and f"{model_dir}/{LABELS_FILE}" in listed:  # releases since 0.4 (class names known)
        triton.add(f"{model_dir}/{LABELS_FILE}")
    allowed = {MODEL, WEIGHTS, *REPORTS, *external} | triton
    for name in sorted(listed - allowed):
        raise TamperedReleaseError(
            f"{release / name}: not a file of a release (model.onnx, reports, external data, "
            f"{model_dir}/{{{CONFIG_FILE},{MODEL_VERSION}/{MODEL_FILE}}})"
        )
    present = listed & triton
    if not present:
        return  # a release written before the Triton repository existed
    for name in sorted(triton - present):
        raise TamperedReleaseError(f"{release / name}: missing from the Triton repository")
    for name in [MODEL_FILE, *external]:
        copy = f"{model_dir}/{MODEL_VERSION}/{name}"
        if manifest.files[copy].sha256 != manifest.files[name].sha256:
            raise TamperedReleaseError(f"{release / copy}: not a byte-identical copy of {name}; Triton would serve another model")
    inputs, outputs = graph_signature(release / MODEL)
    text = (release / model_dir / CONFIG_FILE).read_text(encoding="utf-8", errors="replace")
    labels = f"{model_dir}/{LABELS_FILE}" in triton
    problem = triton_config_problem(text, manifest.name, inputs, outputs, manifest.config, labels)
    if problem:
        raise TamperedReleaseError(f"{release / model_dir / CONFIG_FILE}: {problem}")
    if labels and (release / model_dir / LABELS_FILE).read_text(encoding="utf-8", errors="replace") != labels_text(class_names):
        raise TamperedReleaseError(f"{release / model_dir / LABELS_FILE}: not the manifest's class_names, one per line")


# --- 5. provenance and config ---------------------------------------------------------------------


def check_provenance(release: Path, manifest: Manifest) -> None:
    from nhle_pipeline.verify.ort import read_metadata

    meta = read_metadata(release / MODEL)
    expect = {
        "method": manifest.method,
        "config_sha256": manifest.config_sha256,
        "forget_classes": ",".join(map(str, manifest.forget_classes)),
        "num_classes": str(manifest.num_classes),
        "source_model_sha256": manifest.source_model.sha256 or "",
        "cwm_mode": manifest.cwm_mode,
    }
    if manifest.class_names is not None or "class_names" in meta:
        expect["class_names"] = json.dumps(manifest.class_names)
    if manifest.derived is not None:  # a reduced-precision derivative (pipeline quantize)
        expect["precision"] = manifest.derived.precision
        expect["parent_model_sha256"] = manifest.derived.parent.model_sha256
    for k, v in expect.items():
        if meta.get(k) != v:
            raise TamperedReleaseError(f"{release / MODEL}: metadata '{k}' is {meta.get(k)!r}, manifest says {v!r}")


def check_config(release: Path, manifest: Manifest):
    """The manifest's config, validated, and its sha256 recomputed against ``config_sha256``.

    The hash is that of the config as recorded (canonical JSON) or as this version
    re-validates it (defaults of fields added since filled in): either proves that
    the recorded config is the one the release was made with."""
    from nhle_pipeline.pipeline.config import parse_config

    where = f"{release / MANIFEST}"
    cfg = parse_config(manifest.config, f"{where} config")
    recorded = hashlib.sha256(json.dumps(manifest.config, sort_keys=True).encode()).hexdigest()
    if manifest.config_sha256 not in (recorded, cfg.sha256()):
        raise TamperedReleaseError(
            f"{where}: config_sha256 {manifest.config_sha256[:12]}… is not the sha256 of its config ({cfg.sha256()[:12]}…)"
        )
    if not all(isinstance(c, int) for c in cfg.forget.classes):
        raise TamperedReleaseError(f"{where}: config forget.classes {cfg.forget.classes} are not resolved class ids")
    if cfg.data.class_names is not None and manifest.class_names != list(cfg.data.class_names):
        raise TamperedReleaseError(f"{where}: class_names {manifest.class_names!r} differ from its config's data.class_names")
    for key, value in (("forget_classes", cfg.forget_ids), ("num_classes", cfg.model.num_classes),
                       ("seed", cfg.seed)):
        if getattr(manifest, key) != value:
            raise TamperedReleaseError(f"{where}: {key} {getattr(manifest, key)!r} differs from its config's {value!r}")
    return cfg


# --- 5b. the verdict the manifest records, and the graph -------------------------------------------


def check_verdict(release: Path, manifest: Manifest) -> None:
    """Only a release's record verifies: a failed run's manifest (its staging folder promoted,
    or a released one edited to say so) is refused whatever its seal or signature."""
    where = release / MANIFEST
    if manifest.status != "released" or not manifest.passed:
        raise TamperedReleaseError(f"{where}: status '{manifest.status}', passed {str(manifest.passed).lower()}: "
                                   "the record of a run that did not release, not a release")
    failed = [g.name for g in manifest.gates if not g.passed]
    if failed:
        raise TamperedReleaseError(f"{where}: records failed gate(s) {', '.join(failed)}: not a release")


def check_graph(release: Path, derived: bool) -> None:
    """``model.onnx`` holds nothing an export of ours does not (verify/canonical.py)."""
    from nhle_pipeline.export.onnx_file import load_onnx
    from nhle_pipeline.verify.canonical import DERIVED_DOMAINS, STANDARD_DOMAINS, graph_problems

    problems = graph_problems(load_onnx(release / MODEL, weights=False),
                              domains=DERIVED_DOMAINS if derived else STANDARD_DOMAINS)
    if problems:
        raise TamperedReleaseError(f"{release / MODEL}: not a graph the exporter makes: {'; '.join(problems)}")


# The packages whose versions shape an exported graph: another version of either may write the
# same model with other nodes, so a difference from a fresh export proves nothing across them.
EXPORTER_PACKAGES = ("torch", "onnxscript")


def exporter_drift(manifest: Manifest) -> dict[str, tuple[str | None, str]]:
    """Each exporter package whose version here is not the one the release was exported with:
    name -> (the release's, or None where its manifest does not say; this machine's)."""
    from nhle_pipeline.pipeline.release.manifest import library_versions

    here, made = library_versions(), manifest.runtime.versions
    return {k: (made.get(k), here[k]) for k in EXPORTER_PACKAGES if made.get(k) != here[k]}


def check_against_fresh_export(release: Path, fresh: Path, manifest: Manifest, *, signed: bool,
                               notes: list[str]) -> bool | None:
    """The shipped graph is a fresh export of its architecture (node for node, attribute for
    attribute): True. A difference is tampering, unless this machine's exporter is not the one
    that made the release: then a signed release is taken on its producer's word (None: not
    compared, and said), an unsigned one refused with the versions to verify with."""
    from nhle_pipeline.export.onnx_file import load_onnx
    from nhle_pipeline.verify.canonical import structure_difference

    diff = structure_difference(load_onnx(release / MODEL), load_onnx(fresh))
    if not diff:
        return True
    drift = exporter_drift(manifest)
    if not drift:
        raise TamperedReleaseError(f"{release / MODEL}: not the graph the exporter makes for "
                                   f"'{manifest.source_model.arch}': {diff}")
    versions = ", ".join(f"{k} {made or '(not recorded)'} where this machine has {here}"
                         for k, (made, here) in drift.items())
    if signed:
        notes.append(f"graph not compared with a fresh export: the signed release was exported with {versions}, "
                     f"whose graph differs ({diff})")
        return None
    pins = " ".join(f"{k}=={made}" for k, (made, _) in drift.items() if made)
    raise TamperedReleaseError(
        f"{release / MODEL}: differs from this machine's export of '{manifest.source_model.arch}' ({diff}), and "
        f"the release was exported with {versions}: verify with the producer's exporter"
        + (f" (pip install {pins})" if pins else "") + ", or verify a signed release with --public-key")


def check_batch_independence(release: Path, data, got, forget: list[int], atol: float, device: str) -> float:
    """The shipped model's logits at batch 1 and 3 are the measuring pass's (else it would be
    served another model than the one measured)."""
    import numpy as np

    from nhle_pipeline.verify.batch_independence import (
        BATCH_SIZES,
        batch_disagreement,
        batch_sample,
    )

    rows = batch_sample(got.test_idx, data.test.y, forget)
    images = np.concatenate(list(data.test.image_batches(got.test_idx[rows], len(rows))))
    worst = batch_disagreement(release / MODEL, images, got.test_logits[rows], device=device)
    if not worst <= atol:
        raise TamperedReleaseError(
            f"{release / MODEL}: its logits depend on the batch: max |Δ| {worst:.3g} between batches of "
            f"{', '.join(map(str, BATCH_SIZES))} and the measuring pass's on {len(rows)} test images (> {atol:g})")
    return worst


def check_release_weights(release: Path, cfg, data, manifest: Manifest, got, forget: list[int], atol: float,
                          notes: list[str]) -> None:
    """``model.safetensors`` (the unlearned PyTorch weights) gives ``model.onnx``'s logits: loaded
    into the architecture (registry and library ones; an import path runs code, so not here)."""
    import numpy as np
    import torch

    from nhle_pipeline.pipeline.checkpoint import load_weights
    from nhle_pipeline.pipeline.errors import ModelError
    from nhle_pipeline.pipeline.loading import build_configured_model
    from nhle_pipeline.verify.batch_independence import batch_sample
    from nhle_pipeline.verify.metrics import parity_max_abs

    if ":" in cfg.model.arch and not _library(cfg.model.arch):
        notes.append(f"{WEIGHTS} not checked against model.onnx: model.arch '{cfg.model.arch}' imports code")
        return
    model, _ = build_configured_model(cfg, data)
    try:
        load_weights(model, release / WEIGHTS, trust_pickle=False)
    except ModelError as e:
        raise TamperedReleaseError(f"{release / WEIGHTS}: not the weights of the release's architecture ({e})") from e
    from nhle_pipeline.export.onnx_file import load_onnx
    from nhle_pipeline.verify.graph import initializer_arrays

    # The heads' tensors are the exporter's initializers unchanged (other layers may be folded,
    # BatchNorm into its Conv): CWM's masked rows must be the same bits in both files.
    inits = initializer_arrays(load_onnx(release / MODEL))
    state = model.state_dict()
    for head in manifest.heads or [manifest.head]:
        for k in (f"{head}.weight", f"{head}.bias"):
            if k in state and k in inits and not np.array_equal(state[k].detach().cpu().numpy(), inits[k]):
                raise TamperedReleaseError(
                    f"{release / WEIGHTS}: tensor '{k}' is not model.onnx's initializer of that name")
    rows = batch_sample(got.test_idx, data.test.y, forget)
    x = np.concatenate(list(data.test.image_batches(got.test_idx[rows], len(rows))))
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(x)).numpy()
    diff = parity_max_abs(logits.astype(np.float32), got.test_logits[rows].astype(np.float32))
    if not diff <= atol:
        raise TamperedReleaseError(f"{release / WEIGHTS}: its logits differ from model.onnx's by {diff:.3g} "
                                   f"(> {atol:g}) on {len(rows)} test images: not the weights of the shipped model")
    notes.append(f"{WEIGHTS} gives model.onnx's logits (max |Δ| {diff:.2g} on {len(rows)} test images)")


def check_derived_batch_independence(release: Path, data, got, forget: list[int], device: str) -> None:
    """A reduced-precision derivative answers the same top-1 class at batch 1 and 3 as in the
    measuring pass (its logits may move by a quantization step: dynamic INT8 scales per batch)."""
    import numpy as np

    from nhle_pipeline.verify.batch_independence import BATCH_SIZES, batch_sample
    from nhle_pipeline.verify.ort import open_session, ort_logits

    rows = batch_sample(got.test_idx, data.test.y, forget)
    images = np.concatenate(list(data.test.image_batches(got.test_idx[rows], len(rows))))
    sess, _ = open_session(release / MODEL, device)
    want = got.test_logits[rows].argmax(1)
    for size in BATCH_SIZES:
        top1 = ort_logits(sess, images, size).argmax(1)
        if not np.array_equal(top1, want):
            raise TamperedReleaseError(
                f"{release / MODEL}: its top-1 class depends on the batch: {int((top1 != want).sum())} of "
                f"{len(rows)} test images change class at batch {size}")


# Gates whose recorded value verify recomputes the same way (the rest are producer-side or depend
# on the verifying machine's floats: parity, evidence_copy, batch_independent).
RECOMPUTED_GATES = ("acc_f", "acc_r_drop", "ratio_d_relative", "probe_auc", "mia_efficacy",
                    "cwm_in_graph", "output_masked")


def check_recorded_gates(release: Path, manifest: Manifest, gates: list[GateResult]) -> None:
    """Each recorded gate verify also computes must record the value verify finds."""
    got = {g.name: g.value for g in gates}
    for g in manifest.gates:
        if g.name not in RECOMPUTED_GATES or g.name not in got:
            continue
        a, b = g.value, got[g.name]
        if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
            same = a == b
        else:
            same = _drift([(float(a), float(b))]) <= REPRODUCE_ATOL
        if not same:
            raise TamperedReleaseError(f"{release / MANIFEST}: gate '{g.name}' records {a!r}, "
                                       f"verify recomputes {b!r}: the record is not this model's")


# --- 6. recomputed metrics ------------------------------------------------------------------------


def _drift(pairs: list[tuple[float, float]]) -> float:
    """Largest |recomputed - recorded|; NaN on both sides agrees, NaN or inf on one side is inf."""
    worst = 0.0
    for a, b in pairs:
        a, b = float(a), float(b)
        if (math.isnan(a) and math.isnan(b)) or a == b:
            continue
        if not (math.isfinite(a) and math.isfinite(b)):
            return math.inf
        worst = max(worst, abs(a - b))
    return worst


def _accuracy_pairs(got, recorded) -> list[tuple[float, float]]:
    pairs = [(got.acc_f, recorded.acc_f), (got.acc_r, recorded.acc_r)]
    if len(got.per_class) != len(recorded.per_class):
        return [*pairs, (math.inf, 0.0)]
    return pairs + list(zip(got.per_class, recorded.per_class, strict=True))


def _evidence_pairs(got: dict, recorded) -> list[tuple[float, float]]:
    rec = recorded.model_dump()
    return [(got[k], rec[k]) for k in ("ratio_d", "probe_auc", "mia_efficacy")]


def _masked_bias(cfg, manifest: Manifest) -> tuple[float | None, str]:
    """The bias CWM gives the forgotten rows in ``cfg``'s mode (pipeline.cwm.masked_bias), and where
    that number comes from: ``zero`` and ``suppress`` fix it in the config; ``calibrated`` derives it
    from the model and records it in the manifest, which the rows are checked against (its Acc_F is
    recomputed regardless)."""
    from nhle_pipeline.pipeline.cwm import masked_bias

    cwm = cfg.unlearn.cwm
    record = getattr(manifest.metrics, "cwm", None)
    bias = masked_bias(cwm.mode, cwm.suppress_bias, record.calibration if record is not None else None)
    if bias is None:
        return None, f"of mode {cwm.mode} (the manifest records none)"
    if cwm.mode == "zero":
        return bias, "0 (mode zero)"
    if cwm.mode == "suppress":
        return bias, f"{bias:g} (suppress_bias)"
    return bias, f"{bias:.6g} (mode {cwm.mode}, the manifest's metrics.cwm.bias)"


def recomputed_metrics(got, original, recorded, graph_unchanged: bool | None, notes: list[str],
                       original_name: str = "original") -> tuple[dict, str]:
    """The gate inputs verify recomputes from the shipped model (``got``): against the original
    measured here from --source-weights (``original``), else the manifest's recorded one (said in
    ``notes``). Returns the metrics and where the original's numbers came from."""
    if original is not None:
        acc_r_before, ev_before = original.accuracy.acc_r, original.evidence.to_dict()
        original_from = "source weights"
        notes.append(f"the {original_name} was measured here from --source-weights (sha256 matches "
                     f"source_model.sha256): Acc_R {acc_r_before:.4f}")
    else:
        acc_r_before, ev_before = recorded.original.acc_r, recorded.evidence.original.model_dump()
        original_from = "manifest"
        notes.append(f"ΔAcc_R is against the manifest's recorded {original_name} Acc_R {acc_r_before:.4f}, not "
                     "recomputed (pass --source-weights to measure the original here)")
    after = got.accuracy
    metrics = {
        "acc_f": after.acc_f,
        "delta_acc_r": after.acc_r - acc_r_before,
        "unlearned": after.to_dict(),
        "original": original.accuracy.to_dict() if original is not None else None,
        "evidence_copy_max_abs": got.copy_max_abs,
        "evidence": {"original": ev_before, "unlearned": got.evidence.to_dict()},
        "graph_unchanged": graph_unchanged,
    }
    return metrics, original_from


CALIBRATION_ATOL = 1e-3  # relative to max(1, |bias|): onnxruntime vs PyTorch logits, other hardware


def _recalibrate(model: Path, cfg, data, device: str):
    """The calibrated CWM bias recomputed from the shipped model: the forgotten rows do not touch
    the retained logits, so the release's retained logits on the run's seeded calibration images
    are the ones the run calibrated on (pipeline.cwm.calibrated_bias)."""
    import numpy as np

    from nhle_pipeline.pipeline.cwm import CALIBRATION_SAMPLES, calibrated_bias
    from nhle_pipeline.pipeline.data import eval_batch_size
    from nhle_pipeline.verify.evidence import subsample
    from nhle_pipeline.verify.ort import open_session, ort_logits

    batch = eval_batch_size(cfg.data, data.input_shape)
    sess, _ = open_session(model, device)
    idx = subsample(len(data.train), CALIBRATION_SAMPLES, cfg.seed)
    logits = np.concatenate([ort_logits(sess, x, batch) for x in data.train.image_batches(idx, batch)])
    retained = [c for c in range(cfg.model.num_classes) if c not in cfg.forget_ids]
    return calibrated_bias(logits[:, retained])


def _verify_config(raw: dict, data_root: str | None) -> tuple[dict, list[str]]:
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


def check_source_weights(manifest: Manifest, cfg, weights: Path) -> None:
    """The deployer's copy of the original weights is the one the release was made from."""
    if manifest.source_model.sha256 is None:
        raise TamperedReleaseError(f"{MANIFEST}: records no source_model.sha256 to check --source-weights against")
    if not weights.is_file():
        raise ModelError(f"--source-weights: no such file '{weights}'")
    got = _sha256(weights)
    if got != manifest.source_model.sha256:
        raise ModelError(
            f"--source-weights: '{weights}' has sha256 {got[:12]}…, the release was made from "
            f"{manifest.source_model.sha256[:12]}… (source_model.sha256)"
        )
    from nhle_pipeline.pipeline.models import library_of

    if ":" in cfg.model.arch and not library_of(cfg.model.arch):
        raise ModelError(
            f"model.arch: the release's config names '{cfg.model.arch}', which imports code; "
            "verify --source-weights builds registry and library (torchvision:, timm:) architectures only"
        )


def _export_original(cfg, data, manifest: Manifest, weights: Path, scratch: Path) -> Path:
    """Export the original model (the manifest's config, the deployer's weights) into ``scratch``."""
    from nhle_pipeline.export.onnx_export import export_onnx
    from nhle_pipeline.pipeline.checkpoint import load_weights
    from nhle_pipeline.pipeline.loading import build_configured_model

    model, head = build_configured_model(cfg, data)
    if head != manifest.head:
        raise TamperedReleaseError(f"{MANIFEST}: head '{manifest.head}' is not the config's model head '{head}'")
    load_weights(model, weights, trust_pickle=False)
    path = scratch / "original.onnx"
    export_onnx(model.eval(), data.input_shape, path, opset=cfg.export.opset)
    return path


def _library(arch: str) -> str | None:
    from nhle_pipeline.pipeline.models import library_of

    return library_of(arch)


def _measured(path: Path, manifest: Manifest, data, forget: list[int], n: int, cfg, layers: list[str], scratch: Path,
              *, device: str, shipped_logits: bool = False):
    """verify's pass over ``path`` (the shipped file, or the original's export), with the
    layer-wise audit's features at ``layers``: tensors the graph must have."""
    from nhle_pipeline.pipeline.data import eval_batch_size
    from nhle_pipeline.verify.errors import AuditLayerError
    from nhle_pipeline.verify.measure import measure_onnx

    try:
        return measure_onnx(path, manifest.head, data.train, data.test, forget, n, seed=cfg.seed, device=device,
                            batch_size=eval_batch_size(cfg.data, data.input_shape), scratch=scratch,
                            shipped_logits=shipped_logits, layers=layers)
    except AuditLayerError as e:
        raise TamperedReleaseError(f"{MANIFEST}: metrics.representation.layers: {e} (in {path.name})") from e


def _export_fresh(cfg, data, manifest: Manifest, scratch: Path) -> Path:
    """A fresh export of the release's (registry) architecture, seeded random weights."""
    import torch

    from nhle_pipeline.export.onnx_export import export_onnx
    from nhle_pipeline.pipeline.loading import build_configured_model

    torch.manual_seed(cfg.seed)
    model, head = build_configured_model(cfg, data)
    if head != manifest.head:
        raise TamperedReleaseError(f"{MANIFEST}: head '{manifest.head}' is not the config's model head '{head}'")
    path = scratch / "fresh.onnx"
    export_onnx(model.eval(), data.input_shape, path, opset=cfg.export.opset)
    return path


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

    raw, notes = _verify_config(manifest.config, data_root)
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
        got = _measured(rel / MODEL, manifest, data, forget, n, cfg, layers, scratch, shipped_logits=derived,
                        device="cpu" if derived and device == "auto" else device)
        recalibrated = None
        if cfg.unlearn.cwm.mode == "calibrated" and not derived:
            recalibrated = _recalibrate(rel / MODEL, cfg, data, device)
        if derived:
            from nhle_pipeline.pipeline.release.derived import check_derived

            check_derived_batch_independence(rel, data, got, forget, "cpu" if device == "auto" else device)

            return check_derived(rel, manifest, cfg, data, got, parent=parent, parent_manifest=parent_manifest,
                                 policy=policy, policy_source=policy_source, notes=notes, signature=fingerprint,
                                 signed=SIGNATURE in tree.files, source_weights=source_weights, scratch=scratch,
                                 device=device)
        original = graph_unchanged = None
        if source_weights is not None:
            original_onnx = _export_original(cfg, data, manifest, Path(source_weights), scratch)
            original = _measured(original_onnx, manifest, data, forget, n, cfg, layers, scratch, device=device)
            graph_unchanged = check_against_fresh_export(rel, original_onnx, manifest, signed=fingerprint is not None,
                                                         notes=notes)
        elif ":" not in cfg.model.arch or _library(cfg.model.arch):  # registry or library: export it here
            graph_unchanged = check_against_fresh_export(rel, _export_fresh(cfg, data, manifest, scratch), manifest,
                                                         signed=fingerprint is not None, notes=notes)
        else:
            notes.append(f"graph not compared with a fresh export: model.arch '{cfg.model.arch}' imports code, "
                         "which verify never runs")
        batch_max_abs = check_batch_independence(rel, data, got, forget, policy.gates.parity_atol, device)
        if WEIGHTS in manifest.files:
            check_release_weights(rel, cfg, data, manifest, got, forget, policy.gates.parity_atol, notes)

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
    gates = evaluate_gates(metrics, policy.gates, with_parity=False, cwm_applied=mode != "none")

    if mode != "none":
        bias, whence = _masked_bias(cfg, manifest)
        masked = None
        if bias is not None:
            try:
                masked = all(rows_masked(rel / MODEL, h, forget, bias) for h in (manifest.heads or [manifest.head]))
            except (IndexError, ValueError) as e:
                raise TamperedReleaseError(f"{rel / MODEL}: the head '{manifest.head}' does not fit the manifest ({e})") from e
        metrics["cwm_in_graph"] = masked
        gates.append(gate_result("cwm_in_graph", masked, "==", True,
                           f"forgotten rows 0 and bias {whence} in the head's Gemm initializers (recomputed)"))
    elif policy.require_cwm:
        gates.append(gate_result("cwm_in_graph", None, "==", True, "the release's config says cwm.mode none; the policy requires CWM"))
    if recalibrated is not None:
        record = manifest.metrics.cwm.calibration if manifest.metrics.cwm is not None else None
        gap = math.inf if record is None else abs(recalibrated.bias - record.bias)
        metrics["cwm_calibration_gap"] = gap
        gates.append(gate_result("cwm_calibration", gap, "<=", CALIBRATION_ATOL * max(1.0, abs(recalibrated.bias)),
                                 f"|recorded - recomputed| calibrated bias (recomputed: {recalibrated.bias:.6g} from the "
                                 f"shipped model's retained logits on the {recalibrated.samples} seeded calibration images)"))
    if graph_unchanged is not None:
        gates.append(gate_result("graph_unchanged", graph_unchanged, "==", True,
                           "node for node the graph a fresh export of the architecture makes"))
    check_recorded_gates(rel, manifest, gates)

    pairs = _accuracy_pairs(after, recorded.unlearned) + _evidence_pairs(got.evidence.to_dict(), recorded.evidence.unlearned)
    what = "recomputed per-class accuracy, Acc_F, Acc_R, Ratio_D, probe AUC, MIA-efficacy vs the manifest's"
    if original is not None:
        pairs += _accuracy_pairs(original.accuracy, recorded.original)
        pairs += _evidence_pairs(ev_before, recorded.evidence.original)
        what += " (the original's too)"
    if rep.pairs:
        pairs += rep.pairs
        what += f"; representation audit: {rep.what}"
    drift = _drift(pairs)
    gates.append(gate_result("reproduces_manifest", drift, "<=", REPRODUCE_ATOL, what))
    manifest_gates = dict((manifest.config.get("verify") or {}).get("gates") or {})
    return ReleaseCheck(gates, metrics, got.provider, policy, policy_source, manifest_gates,
                        signature=fingerprint, signed=SIGNATURE in tree.files, original_from=original_from, notes=notes)
