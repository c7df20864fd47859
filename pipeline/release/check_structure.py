"""`pipeline verify`, before any number: the release folder (hygiene), its manifest and seal, the
files against their digests, the layout (only a release's own files; the Triton copy is
model.onnx), provenance, the config, the recorded verdict, and the graph — canonical
(verify/canonical.py), and node for node the graph a fresh export of the architecture makes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nhle_pipeline.pipeline.errors import ModelError, ReleaseError, TamperedReleaseError
from nhle_pipeline.pipeline.jsonio import loads as _strict_json
from nhle_pipeline.pipeline.release.files import MANIFEST, MODEL, REPORTS, SIGNATURE, WEIGHTS
from nhle_pipeline.pipeline.release.manifest import (
    MANIFEST_SEAL,
    Manifest,
    manifest_seal,
    parse_manifest,
)


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



def external_locations(model_path: Path) -> list[str]:
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
    external = external_locations(release / MODEL)
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



def check_source_weights(manifest: Manifest, cfg, weights: Path) -> None:
    """The deployer's copy of the original weights is the one the release was made from."""
    if manifest.source_model.sha256 is None:
        raise TamperedReleaseError(f"{MANIFEST}: records no source_model.sha256 to check --source-weights against")
    if not weights.exists():
        raise ModelError(f"--source-weights: no such file '{weights}'")
    from nhle_pipeline.pipeline.checkpoint import weights_file

    got = _sha256(weights_file(weights))
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
