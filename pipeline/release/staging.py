"""The staging folder and the atomic release.

Everything a run writes goes to ``<release.dir>/.staging/<name>-<stamp>/``
(same filesystem as the release, so the final step is one ``rename``). A
release appears only complete: a failed gate, an error or an interruption
leaves the staging folder for diagnosis and no release. An existing release
is never replaced without ``force``; with it, the old folder is moved aside,
the new one renamed in, and the old one deleted (restored if the swap fails).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from nhle_pipeline.pipeline.errors import ReleaseError
from nhle_pipeline.pipeline.paths import folder_problem
from nhle_pipeline.pipeline.release.manifest import MANIFEST, SCRATCH, seal_manifest_file
from nhle_pipeline.pipeline.release.signing import SigningKey, sign_release

STAGING = ".staging"


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staging: Path, target: Path, force: bool, sign_key: SigningKey | None = None) -> Path:
    """Seal the manifest, sign the folder (with ``sign_key``), then atomically move the
    complete staging folder to ``target``."""
    shutil.rmtree(staging / SCRATCH, ignore_errors=True)
    seal_manifest_file(staging / MANIFEST)
    if sign_key is not None:  # last write: the signature covers every other file, the sealed manifest too
        sign_release(staging, sign_key)
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
