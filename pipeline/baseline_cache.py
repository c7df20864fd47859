"""The original model's outputs, cached by content across forget requests.

Every forget request against one model has the same original: its pass over
the data (verify.measure.ModelOutputs: per-class counts, the evidence
subsets' logits and features) and its exported graph's op types do not
depend on which classes are forgotten. They are stored under a key that
hashes everything they do depend on: the weights' sha256, the architecture,
a fingerprint of the data (labels, and the files' sizes and times or the
in-memory pixels), the preprocessing, the evidence settings and seed, the
export opset, the library versions and the code itself. Any change misses.

An entry is one ``.npz`` written atomically (temp file, rename) with a
sha256 of its contents; an entry that fails to load, whose checksum or
shapes do not match, or whose key differs, is rebuilt, never trusted. The
cache lives under ``cache.dir`` (default ``$PIPELINE_CACHE_DIR``, else
``~/.cache/nhle-pipeline``), in ``baseline/``; ``--no-cache`` or
``cache.enabled: false`` turns it off. It is as trusted as that folder:
a run that must recompute everything (a release CI job) passes ``--no-cache``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nhle_pipeline.pipeline.jsonio import loads as strict_json
from nhle_pipeline.verify.evidence import PROBE_MAX_TRAIN
from nhle_pipeline.verify.measure import EVIDENCE_MAX_TEST, ModelOutputs

FORMAT = 2  # 2: the layer-wise audit's features (test_layer_<i>, train_layer_<i>)
_ARRAYS = ("correct", "total", "test_idx", "test_logits", "test_features", "train_idx", "train_logits",
           "train_features")


@dataclass
class CachedBaseline:
    outputs: ModelOutputs
    op_types: list[str]  # the original export's top-level ONNX op types


def code_fingerprint() -> str:
    """sha256 over this package's source files (export/, verify/, pipeline/)."""
    import nhle_pipeline.export
    import nhle_pipeline.pipeline
    import nhle_pipeline.verify

    h = hashlib.sha256()
    for pkg in (nhle_pipeline.export, nhle_pipeline.verify, nhle_pipeline.pipeline):
        root = Path(pkg.__file__).parent
        for f in sorted(root.rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def data_fingerprint(train, test) -> str:
    """sha256 of both splits' labels and their sources' identity (see ``source_identity``)."""
    h = hashlib.sha256()
    for split in (train, test):
        h.update(np.ascontiguousarray(split.y).tobytes())
        h.update(source_identity(split.source).encode())
        if split.rows is not None:  # a subset view of its source
            h.update(np.ascontiguousarray(split.rows).tobytes())
    return h.hexdigest()


def source_identity(source) -> str:
    """Files by path, size and modification time; in-memory pixels by their sha256."""
    from nhle_pipeline.pipeline.image_sources import ArraySource, ImageFileSource, MemmapSource

    if isinstance(source, MemmapSource):
        st = source.member.archive.stat()
        return f"npz:{source.member.archive.resolve()}:{st.st_size}:{st.st_mtime_ns}:{source.preprocess}"
    if isinstance(source, ImageFileSource):
        h = hashlib.sha256()
        for p in source.paths:
            st = os.stat(p)
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return f"files:{source.mode}:{h.hexdigest()}:{source.preprocess}"
    if isinstance(source, ArraySource):
        return f"array:{hashlib.sha256(np.ascontiguousarray(source.images).tobytes()).hexdigest()}:{source.preprocess}"
    raise TypeError(f"no identity for {type(source).__name__}")


def baseline_key(parts: dict) -> str:
    """The cache key: sha256 of the canonical JSON of everything the baseline depends on."""
    body = {**parts, "format": FORMAT, "evidence_max_test": EVIDENCE_MAX_TEST, "probe_max_train": PROBE_MAX_TRAIN,
            "code": code_fingerprint()}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


class BaselineCache:
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "baseline"

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.npz"

    def load(self, key: str) -> CachedBaseline | None:
        """The entry for ``key``, or None when absent or not intact (then it is removed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = strict_json(str(z["meta"]), allow_nan=True)  # a key twice: damaged, rebuilt
                arrays = {k: z[k] for k in _array_names(len(meta["layers"]))}
                stored_sum = str(z["checksum"])
            if meta.get("key") != key or stored_sum != _checksum(arrays, meta):
                raise ValueError("key or checksum mismatch")
            n = len(meta["layers"])
            out = ModelOutputs(**{k: arrays[k] for k in _ARRAYS}, provider=str(meta["provider"]),
                               copy_max_abs=float(meta["copy_max_abs"]), layers=tuple(str(t) for t in meta["layers"]),
                               test_layer_features=tuple(arrays[f"test_layer_{i}"] for i in range(n)),
                               train_layer_features=tuple(arrays[f"train_layer_{i}"] for i in range(n)))
            _check_shapes(out)
            return CachedBaseline(out, [str(t) for t in meta["op_types"]])
        except Exception:  # noqa: BLE001 - any damage means: rebuild
            path.unlink(missing_ok=True)
            return None

    def store(self, key: str, entry: CachedBaseline) -> Path | None:
        """Write the entry atomically; a cache that cannot be written is skipped, not an error."""
        out = entry.outputs
        arrays = {k: np.asarray(getattr(out, k)) for k in _ARRAYS}
        for i in range(len(out.layers)):
            arrays[f"test_layer_{i}"] = np.asarray(out.test_layer_features[i])
            arrays[f"train_layer_{i}"] = np.asarray(out.train_layer_features[i])
        meta = {"key": key, "provider": out.provider, "copy_max_abs": out.copy_max_abs, "op_types": entry.op_types,
                "layers": list(out.layers)}
        tmp = self.path(key).with_name(f".{key}.{os.getpid()}.tmp")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez(buf, **arrays, meta=np.array(json.dumps(meta)), checksum=np.array(_checksum(arrays, meta)))
            tmp.write_bytes(buf.getvalue())
            tmp.replace(self.path(key))
        except BaseException as e:  # a full disk, a read-only folder, Ctrl-C: no torn temp file left behind
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if isinstance(e, OSError):  # a cache that cannot be written is skipped, not an error
                return None
            raise
        return self.path(key)


def _array_names(n_layers: int) -> list[str]:
    return [*_ARRAYS, *(f"{split}_layer_{i}" for i in range(n_layers) for split in ("test", "train"))]


def _checksum(arrays: dict[str, np.ndarray], meta: dict) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for k in _array_names(len(meta["layers"])):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _check_shapes(out: ModelOutputs) -> None:
    n_test, n_train = len(out.test_idx), len(out.train_idx)
    if out.test_logits.shape[0] != n_test or out.test_features.shape[0] != n_test:
        raise ValueError("test subset shapes")
    if out.train_logits.shape[0] != n_train or out.train_features.shape[0] != n_train:
        raise ValueError("train subset shapes")
    if any(len(a) != n_test for a in out.test_layer_features) or any(len(a) != n_train for a in out.train_layer_features):
        raise ValueError("layer feature shapes")
    if out.correct.shape != out.total.shape or np.any(out.correct > out.total):
        raise ValueError("counts")
