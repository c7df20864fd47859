"""The staging folder and the atomic release.

Everything a run writes goes to ``<release.dir>/.staging/<name>-<stamp>-<unique>-<pid>/``
(same filesystem as the release, checked before any work, so the final step is
one ``rename``). A release appears only complete. A failed gate leaves the
staging folder with its report for diagnosis; an error, Ctrl-C, SIGTERM or a
full disk removes it (``discard_staging``). An existing release is never
replaced without ``force``; with it, the new folder and the old one trade
places in one atomic ``renameat2(RENAME_EXCHANGE)`` (Linux), so a reader finds
the old release or the new one at the path, never nothing, and the old one is
then deleted. Where the exchange is not available (another OS, a filesystem
without it) the old folder is moved aside first and restored if the swap fails.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import time
from pathlib import Path

from nhle_pipeline.pipeline.errors import ReleaseError
from nhle_pipeline.pipeline.paths import folder_problem
from nhle_pipeline.pipeline.release.files import MANIFEST, NOT_RELEASED, SCRATCH
from nhle_pipeline.pipeline.release.manifest import seal_manifest_file
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
    _not_inside_a_release(root)
    target = root / name
    if target.is_symlink():  # dangling or not: the release path must be the release itself
        raise ReleaseError(f"release '{target}' is a symbolic link; remove it (a release is a real folder)")
    if target.exists() and not target.is_dir():
        raise ReleaseError(f"release '{target}' exists and is not a folder")
    if target.exists() and not force:
        raise ReleaseError(f"release '{target}' already exists; use --force to replace it")
    staging = root / STAGING
    if staging.is_symlink():
        raise ReleaseError(f"release.dir: '{staging}' is a symbolic link; the staging folder must be a real folder "
                           "on the release's filesystem")
    if staging.exists() and root.exists() and staging.stat().st_dev != root.stat().st_dev:
        raise ReleaseError(f"release.dir: '{staging}' is on another filesystem than '{root}'; "
                           "the release could not be renamed into place atomically")
    return target


def _not_inside_a_release(root: Path) -> None:
    """``root`` (where releases go) is not an existing release, nor inside one (a folder holding
    manifest.json), nor inside a staging folder: a release written there would add files to that
    release (which then fails its checks) or be swept away with the staging folder."""
    seen = set()
    for start in (Path(os.path.abspath(root)), root.resolve()):  # as written, and with links followed
        for folder in (start, *start.parents):
            if folder in seen:
                continue
            seen.add(folder)
            if folder.name == STAGING:
                raise ReleaseError(f"release.dir: '{root}' is inside the staging folder '{folder}'; "
                                   "give a folder of its own (releases go beside each other)")
            if (folder / MANIFEST).is_file() or (folder / MANIFEST).is_symlink():
                raise ReleaseError(f"release.dir: '{root}' is inside the release '{folder}' (it holds {MANIFEST}); "
                                   "a release holds only its own files: give a folder beside it")


def create_staging(release_dir: str | Path, name: str) -> Path:
    """``<release.dir>/.staging/<name>-<stamp>-<unique>-<pid>/`` with its scratch folder."""
    import tempfile

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    area = Path(release_dir) / STAGING
    created = [f for f in (area, *area.parents) if not f.exists()][1:]  # release.dir and above, made here
    try:
        area.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{name}-{stamp}-", suffix=f"-{os.getpid()}", dir=area))
        os.chmod(path, 0o755)  # mkdtemp's 0700 would make a gate-failed report private to this user
        (path / SCRATCH).mkdir()
    except OSError as e:  # os.access() can say yes (root, read-only mounts) where mkdir says no
        raise ReleaseError(f"release.dir: cannot create a staging folder in '{area}' ({e.strerror})") from e
    _CREATED[path] = created
    return path


# staging folder -> the folders above its .staging that create_staging made (deepest first): a
# discarded run removes them again when empty, so a failed first run into a new release.dir leaves nothing
_CREATED: dict[Path, list[Path]] = {}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def discard_staging(staging: Path) -> None:
    """Remove a run's staging folder (an error, an interruption, a full disk): nothing half-made stays."""
    shutil.rmtree(staging, ignore_errors=True)
    for folder in (staging.parent, *_CREATED.pop(staging, [])):  # .staging itself, when this was its last run
        try:
            folder.rmdir()
        except OSError:
            break


def publish(staging: Path, target: Path, force: bool, sign_key: SigningKey | None = None) -> Path:
    """Seal the manifest, sign the folder (with ``sign_key``), then atomically move the
    complete staging folder to ``target`` (trading places with an existing one under ``force``)."""
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
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise ReleaseError(f"release '{target}' became a symbolic link or a file while this run was working; nothing replaced")
    if target.exists():
        if not force:
            raise ReleaseError(f"release '{target}' already exists; use --force to replace it")
        _replace(staging, target)  # staging now holds the old release
        _fsync_dir(target.parent)
        shutil.rmtree(staging, ignore_errors=True)
        return target
    try:
        _rename_noreplace(staging, target)  # atomic; fails if another run released first
    except OSError as e:
        if force and e.errno in (errno.EEXIST, errno.ENOTEMPTY):  # another --force run got there first
            _replace(staging, target)
            shutil.rmtree(staging, ignore_errors=True)
            return target
        raise ReleaseError(f"release '{target}' appeared while this run was working ({e.strerror}); nothing replaced") from e
    _fsync_dir(target.parent)
    return target


def _replace(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target`` and the old release at ``staging``: one atomic exchange
    where the kernel offers it, else two renames with the old release restored on failure."""
    try:
        if _renameat2(staging, target, RENAME_EXCHANGE):
            return
    except OSError as e:
        raise ReleaseError(f"release '{target}': cannot replace it ({e.strerror}); nothing replaced") from e
    aside = staging.with_name(staging.name + "-replaced")
    try:
        os.rename(target, aside)
    except OSError as e:
        raise ReleaseError(f"release '{target}' changed while this run replaced it ({e.strerror}); nothing replaced") from e
    try:
        os.rename(staging, target)
    except BaseException as e:  # an OSError, or Ctrl-C right between the two renames
        try:
            os.rename(aside, target)
        except OSError:
            pass  # another run's release took the path: it stays, ours stays in staging
        if not isinstance(e, OSError):
            raise
        raise ReleaseError(f"release '{target}' appeared while this run was working ({e.strerror}); nothing replaced") from e
    os.rename(aside, staging)  # the old release where the exchange would have put it


def _rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with EEXIST when ``dst`` exists (renameat2 RENAME_NOREPLACE), or
    plain rename where that is unavailable (which still fails on a non-empty folder)."""
    if not _renameat2(src, dst, RENAME_NOREPLACE):
        os.rename(src, dst)


AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def _libc_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _libc_renameat2()


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """True when renameat2 did it; False when this system cannot (the caller falls back);
    OSError for a real failure (EEXIST, ENOENT, ...)."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(dst))




def write_not_released(staging: Path, failed: list[str]) -> None:
    """Mark a failed run's staging folder, so that nobody (and no `pipeline verify`) takes it for
    a release: its manifest says gate_failed, this file says so to a person listing the folder."""
    (staging / NOT_RELEASED).write_text(
        f"This is the staging folder of a run whose gate(s) failed: {', '.join(failed)}.\n"
        "It holds the report and the manifest for diagnosis; it is not a release and has no Triton repository.\n",
        encoding="utf-8")


def not_released_problem(folder: Path) -> str | None:
    """Why ``folder`` is a failed run's staging folder rather than a release (None: it is not one)."""
    marker = folder / NOT_RELEASED
    if marker.is_file() and not marker.is_symlink():
        first = marker.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
        return f"a failed run's staging folder, not a release ({NOT_RELEASED}: {first[0] if first else ''})"
    return None

