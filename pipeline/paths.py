"""Can a folder be created at a path? Checked before any work, so a run fails early."""

from __future__ import annotations

import os
from pathlib import Path


def folder_problem(path: str | Path) -> str | None:
    """Why ``path`` (a folder, existing or to be created) cannot be written, or None.

    Walks up to the nearest existing ancestor: a file there, or no write
    permission, means the folder can never be created.
    """
    existing = Path(path)
    while not existing.exists():
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            return f"'{existing}' is a symbolic link to nothing"
        existing = existing.parent
    if not existing.is_dir():
        return f"'{existing}' is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"'{existing}' is not writable"
    return None
