"""Read-only commands (`pipeline verify`, `pipeline inspect`) write nothing outside their own
temporary folder, which they remove.

The libraries would: onnxruntime keeps a telemetry database and device id under
``~/.cache/Microsoft/DeveloperTools/`` and a session file in ``$TMPDIR`` (off with
``ORT_DISABLE_TELEMETRY=1``); torch creates ``$TMPDIR/torchinductor_<user>`` as soon as
its exporter imports the inductor (``TORCHINDUCTOR_CACHE_DIR``), Triton and the CUDA
driver keep kernel caches under the home folder (``TRITON_CACHE_DIR``,
``CUDA_CACHE_PATH``), matplotlib its font cache (``MPLCONFIGDIR``). While the command
runs, each points into one temporary folder; on leaving, the folder is removed and the
environment restored.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# variable -> sub-folder of the temporary folder (None: a fixed value)
REDIRECTED = {
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "TRITON_CACHE_DIR": "triton",
    "CUDA_CACHE_PATH": "nv",
    "MPLCONFIGDIR": "matplotlib",
}
FIXED = {"ORT_DISABLE_TELEMETRY": "1"}


@contextmanager
def hermetic_caches(prefix: str = "pipeline-") -> Iterator[str]:
    """Point the libraries' caches and telemetry into a fresh temporary folder (yielded) for
    the duration of the block; remove it and restore the environment afterwards."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    saved = {k: os.environ.get(k) for k in (*REDIRECTED, *FIXED)}
    try:
        for key, sub in REDIRECTED.items():
            os.environ[key] = os.path.join(tmp, sub)
        os.environ.update(FIXED)
        yield tmp
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmp, ignore_errors=True)
