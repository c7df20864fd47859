"""Optional MLflow experiment tracking of a `pipeline run` (config section ``tracking:``).

Nothing here imports mlflow at module level: a config without
``tracking.mlflow_uri`` never imports it. With the URI set:

- at load, before any work, ``open_tracker`` checks that mlflow is importable
  and knows the URI's scheme; either failure is a ``ConfigError`` (exit 2, one
  line, nothing written);
- once the verdict is known, ``Tracker.log`` records one MLflow run: the
  parameters (the validated config flattened to dotted keys, the forget classes,
  the method, the library versions), the metrics (accuracies, ΔAcc_R, evidence,
  parity, one 1/0 metric per gate, stage timings), tags (``status``: released or
  gate_failed, the failed gates, the release name and path, the manifest's
  seal) and the files of the release folder (``release/``) or of the kept
  staging folder with its report (``staging/``) as artifacts.

Tracking never decides a run's outcome: the release (or the gate failure) is
final before anything is logged. A tracking failure (server down, store not
writable, a rejected value) is one warning line on stderr, through the
``logging`` module (``nhle_pipeline.pipeline.tracking``), and is recorded
nowhere else; an MLflow run left half-logged is marked FAILED. Only rank 0 of a
torchrun job tracks. The local file store (a folder, ``file:///…``) is opted
in for the duration of the logging (MLflow 3 refuses it unless
``MLFLOW_ALLOW_FILE_STORE`` is true); mlflow-skinny has no SQL stores.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nhle_pipeline.pipeline.config import TrackingConfig
from nhle_pipeline.pipeline.distributed import Group
from nhle_pipeline.pipeline.errors import ConfigError
from nhle_pipeline.pipeline.release.files import MANIFEST, SCRATCH
from nhle_pipeline.pipeline.release.manifest import MANIFEST_SEAL, Manifest, load_manifest

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'nhle-pipeline[tracking]'"
# MLflow's limits per log_batch call and on a parameter's value (MLflow >= 2.10: 6000 chars).
_BATCH_PARAMS, _BATCH_METRICS = 100, 1000
_PARAM_MAX_CHARS = 6000
_SQL = ("sqlite", "postgresql", "mysql", "mssql")
_EVIDENCE = ("ratio_d", "probe_auc", "mia_efficacy", "d_inter", "d_intra")


def open_tracker(settings: TrackingConfig, group: Group | None = None) -> Tracker | None:
    """The run's tracker: None unless ``tracking.mlflow_uri`` is set (and on rank 0 only).

    Checks now, before any work, that mlflow is importable and supports the URI's scheme."""
    if settings.mlflow_uri is None or not (group or Group()).is_main:
        return None
    try:
        import mlflow  # noqa: F401  (the optional dependency)
    except ImportError as e:
        raise ConfigError(
            f"tracking.mlflow_uri: set, but mlflow cannot be imported ({e}); {INSTALL_HINT}"
        ) from e
    _check_scheme(settings.mlflow_uri)
    return Tracker(settings)


def _check_scheme(uri: str) -> None:
    """The installed mlflow has a tracking store for ``uri``'s scheme (mlflow-skinny: no sqlite)."""
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    except ImportError:  # a private module moved: the first log call will say what is wrong
        return
    try:
        _tracking_store_registry.get_store_builder(uri)
    except Exception as e:  # mlflow's UnsupportedModelRegistryStoreURIException
        schemes = getattr(e, "supported_uri_schemes", None)
        known = f"; supported: {', '.join(s for s in schemes if s)} or a local folder" if schemes else ""
        scheme = _scheme(uri)
        skinny = " (mlflow-skinny has no database stores)" if scheme.split("+")[0] in _SQL else ""
        raise ConfigError(
            f"tracking.mlflow_uri: '{scheme}' URIs are not supported by the installed mlflow{skinny}{known}"
        ) from e


def _scheme(uri: str) -> str:
    return uri.split(":", 1)[0] if "://" in uri or uri.startswith(("file:", "databricks")) else ""


class Tracker:
    """Logs one `pipeline run` to MLflow (``log``); built by ``open_tracker``."""

    def __init__(self, settings: TrackingConfig) -> None:
        self.settings = settings
        self.run_id: str | None = None  # the last MLflow run this tracker created

    def log(self, folder: Path, manifest: Manifest | None = None) -> str | None:
        """Log the run whose verdict is in ``folder`` (the release, or the staging folder of a
        failed gate; ``manifest``: its manifest, else read from the folder). Returns the MLflow
        run id, or None when tracking failed: then one warning line, never an exception."""
        self.run_id = None
        try:
            manifest = manifest or load_manifest(folder)
            with _file_store_allowed(self.settings.mlflow_uri), contextlib.redirect_stdout(sys.stderr):
                return self._log(manifest, Path(folder))
        except Exception as e:  # noqa: BLE001  tracking never changes the run's outcome
            self._abandon()
            what = f"MLflow run {self.run_id} is incomplete (marked FAILED)" if self.run_id else "nothing was logged"
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            log.warning(f"warning: tracking: {type(e).__name__}: {reason}; {what}; the run's outcome stands")
            return None

    def _log(self, manifest: Manifest, folder: Path) -> str:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.settings.mlflow_uri)
        experiment_id = _experiment_id(client, self.settings.experiment)
        run = client.create_run(experiment_id, run_name=self.settings.run_name or manifest.name)
        self.run_id, self._client = run.info.run_id, client
        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in run_params(manifest).items()]
        metrics = [Metric(k, v, now, 0) for k, v in run_metrics(manifest).items()]
        for i in range(0, len(params), _BATCH_PARAMS):
            client.log_batch(self.run_id, params=params[i:i + _BATCH_PARAMS])
        for i in range(0, len(metrics), _BATCH_METRICS):
            client.log_batch(self.run_id, metrics=metrics[i:i + _BATCH_METRICS])
        client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in run_tags(manifest, folder).items()])
        prefix = "release" if manifest.status == "released" else "staging"
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_file() and not path.is_symlink() and rel.parts[0] != SCRATCH:
                client.log_artifact(self.run_id, str(path), "/".join((prefix, *rel.parts[:-1])))
        client.set_terminated(self.run_id, "FINISHED")
        return self.run_id

    def _abandon(self) -> None:
        """Mark a half-logged MLflow run FAILED (best effort)."""
        if self.run_id is None:
            return
        with contextlib.suppress(Exception), _file_store_allowed(self.settings.mlflow_uri):
            self._client.set_terminated(self.run_id, "FAILED")


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another process created it meanwhile
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextlib.contextmanager
def _file_store_allowed(uri: str | None) -> Iterator[None]:
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is true; a tracking URI
    that names a local folder opts in (only while logging; the environment is restored)."""
    key = "MLFLOW_ALLOW_FILE_STORE"
    local = uri is not None and _scheme(uri) in ("", "file")
    old = os.environ.get(key)
    if local and old is None:
        os.environ[key] = "true"
    try:
        yield
    finally:
        if local and old is None:
            os.environ.pop(key, None)


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """A nested mapping as dotted keys -> strings (lists and scalars as JSON, strings as they are)."""
    if isinstance(data, dict) and data:
        out: dict[str, str] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    text = data if isinstance(data, str) else json.dumps(data, sort_keys=True)
    return {prefix: text if len(text) <= _PARAM_MAX_CHARS else text[: _PARAM_MAX_CHARS - 1] + "…"}


def run_params(m: Manifest) -> dict[str, str]:
    """The MLflow parameters: the validated config (dotted keys), the request and the versions."""
    return {
        **flatten(m.config),
        "forget_classes": ",".join(map(str, m.forget_classes)),
        **({"forget_class_names": ",".join(m.class_names[c] for c in m.forget_classes)} if m.class_names else {}),
        "method": m.method,
        "config_sha256": m.config_sha256,
        "source_model.sha256": str(m.source_model.sha256),
        "runtime.torch_device": m.runtime.torch_device,
        "runtime.onnxruntime_provider": m.runtime.onnxruntime_provider,
        **{f"versions.{k}": v for k, v in m.runtime.versions.items()},
    }


def run_metrics(m: Manifest) -> dict[str, float]:
    """The MLflow metrics, from the manifest (a missing or non-finite value is not logged)."""
    met, ev = m.metrics, m.metrics.evidence
    out: dict[str, Any] = {
        "acc_f": met.acc_f,
        "delta_acc_r": met.delta_acc_r,
        "parity_max_abs": met.parity_max_abs,
        "evidence_copy_max_abs": met.evidence_copy_max_abs,
        "nhle.steps": met.nhle.steps,
        "cwm.bias": met.cwm.bias if met.cwm else None,
        "passed": int(m.passed),
    }
    for who in ("original", "unlearned", "reference"):
        acc, evidence = getattr(met, who), getattr(ev, who)
        if acc is not None:
            out[f"{who}.acc_f"], out[f"{who}.acc_r"] = acc.acc_f, acc.acc_r
        if evidence is not None:
            out.update({f"{who}.{k}": getattr(evidence, k) for k in _EVIDENCE})
    if ev.gap_to_reference is not None:
        out["gap_to_reference.mean"] = ev.gap_to_reference.mean
    if ev.relearn is not None:
        out["relearn.steps_relative"] = ev.relearn.steps_relative
    rep = met.representation
    if rep is not None:
        for who in ("original", "unlearned", "reference"):
            a = getattr(rep, who)
            if a is not None:
                out.update({f"{who}.{k}": getattr(a, k) for k in ("lpr_f", "lpr_r", "cka_original", "cka_reference")})
        out.update({f"gap_closed.{k}": v for k, v in (rep.gap_closed or {}).items()})
    out.update({f"gate.{g.name}": int(g.passed) for g in m.gates})
    out.update({f"timing_s.{stage}": s for stage, s in m.timings_s.items()})
    return {k: float(v) for k, v in out.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def run_tags(m: Manifest, folder: Path) -> dict[str, str]:
    """The verdict as tags: status, failed gates, where the files are, the manifest's seal."""
    tags = {
        "status": m.status,
        "release.name": m.name,
        "release.path" if m.status == "released" else "staging.path": str(Path(folder).resolve()),
        "method": m.method,
    }
    failed = [g.name for g in m.gates if not g.passed]
    if failed:
        tags["gates.failed"] = ",".join(failed)
    if m.metrics.representation is not None:
        tags["forgetting_level"] = m.metrics.representation.level
    seal = m.manifest_sha256 or _seal_on_disk(Path(folder))
    if seal:
        tags[MANIFEST_SEAL] = seal
    return tags


def _seal_on_disk(folder: Path) -> str | None:
    """The seal publication added to manifest.json (the in-memory manifest predates it)."""
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get(MANIFEST_SEAL)
    except (OSError, ValueError):
        return None
