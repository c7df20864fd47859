"""The staging folder and the atomic release.

Everything a run writes goes to ``<release.dir>/.staging/<name>-<stamp>/``
(same filesystem as the release, so the final step is one ``rename``). A
release appears only complete: a failed gate, an error or an interruption
leaves the staging folder for diagnosis and no release. An existing release
is never replaced without ``force``; with it, the old folder is moved aside,
the new one renamed in, and the old one deleted (restored if the swap fails).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from pipeline.checkpoint import sha256_file
from pipeline.errors import ReleaseError
from pipeline.paths import folder_problem

STAGING = ".staging"
MANIFEST = "manifest.json"
SCRATCH = ".work"  # inside staging; removed before release (e.g. the original's ONNX)
# sha256 of the manifest's canonical JSON without this key, added at publication:
# `pipeline verify` refuses a manifest edited after release (metrics, thresholds, digests).
MANIFEST_SEAL = "manifest_sha256"


def check_target(release_dir: str | Path, name: str, force: bool) -> Path:
    """Validate where the release will go, before any work; returns the target folder."""
    root = Path(release_dir)
    if root.exists() and not root.is_dir():
        raise ReleaseError(f"release.dir: '{root}' exists and is not a folder")
    problem = folder_problem(root)
    if problem:
        raise ReleaseError(f"release.dir: {problem}")
    target = root / name
    if target.exists() and not force:
        raise ReleaseError(f"release '{target}' already exists; use --force to replace it")
    return target


def create_staging(release_dir: str | Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = Path(release_dir) / STAGING / f"{name}-{stamp}-{os.getpid()}"
    try:
        (path / SCRATCH).mkdir(parents=True)
    except OSError as e:  # os.access() can say yes (root, read-only mounts) where mkdir says no
        raise ReleaseError(f"release.dir: cannot create '{path}' ({e.strerror})") from e
    return path


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


def _seal_manifest(folder: Path) -> None:
    path = folder / MANIFEST
    if path.is_file():
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest[MANIFEST_SEAL] = manifest_seal(manifest)
        write_json(path, manifest)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staging: Path, target: Path, force: bool) -> Path:
    """Seal the manifest, then atomically move the complete staging folder to ``target``."""
    shutil.rmtree(staging / SCRATCH, ignore_errors=True)
    _seal_manifest(staging)
    for p in staging.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(staging)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        if not force:
            raise ReleaseError(f"release '{target}' already exists; use --force to replace it")
        old = staging.with_name(staging.name + "-replaced")
        os.rename(target, old)
    try:
        os.rename(staging, target)  # atomic; fails if another run released first
    except BaseException as e:  # an OSError, or Ctrl-C right between the two renames
        if old is not None:
            os.rename(old, target)
        if not isinstance(e, OSError):
            raise
        raise ReleaseError(f"release '{target}' appeared while this run was working ({e.strerror}); nothing replaced") from e
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
