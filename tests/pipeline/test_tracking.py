"""Optional MLflow tracking (tracking.mlflow_uri): real digits runs logged to a local file store
under tmp_path and read back with MLflow's client; no network."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from nhle_pipeline.pipeline.cli import cli
from nhle_pipeline.pipeline.config import TrackingConfig, load_config, parse_config
from nhle_pipeline.pipeline.distributed import Group
from nhle_pipeline.pipeline.errors import GateFailure
from nhle_pipeline.pipeline.release.manifest import file_digests
from nhle_pipeline.pipeline.run import run_pipeline
from nhle_pipeline.pipeline.tracking import Tracker, flatten, open_tracker

ALLOW = "MLFLOW_ALLOW_FILE_STORE"


def _client(uri: str, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv(ALLOW, "true")  # reading MLflow 3's file store back
    return MlflowClient(tracking_uri=uri)


def _only_run(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} was not created"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def _artifacts(client, run_id: str, path: str) -> list[str]:
    out = []
    for info in client.list_artifacts(run_id, path):
        out.extend(_artifacts(client, run_id, info.path) if info.is_dir else [info.path])
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_flatten_gives_dotted_keys_and_json_values():
    assert flatten({"a": {"b": [1, 2], "c": None}, "d": {}, "e": "x", "f": 0.5, "g": True}) == {
        "a.b": "[1, 2]", "a.c": "null", "d": "{}", "e": "x", "f": "0.5", "g": "true"}
    assert flatten({"k": "y" * 7000})["k"] == "y" * 5999 + "…"


def test_tracking_is_not_part_of_the_request(digits_weights, tmp_path):
    """The tracking section changes neither the config's sha256 nor what the manifest records."""
    from tests.conftest import digits_config

    plain = parse_config(digits_config(digits_weights, tmp_path))
    tracked = parse_config(digits_config(digits_weights, tmp_path, tracking={
        "mlflow_uri": "https://user:secret@mlflow.example/", "experiment": "e", "run_name": "r"}))
    assert tracked.tracking.mlflow_uri == "https://user:secret@mlflow.example/"
    assert tracked.sha256() == plain.sha256() and "tracking" not in tracked.model_dump(mode="json")
    assert open_tracker(plain.tracking) is None and open_tracker(TrackingConfig()) is None
    with pytest.raises(Exception, match="mlflow_uri"):
        parse_config(digits_config(digits_weights, tmp_path, tracking={"mlflow_uri": ""}))
    with pytest.raises(Exception, match="tracking.mlflow_url: unknown key"):
        parse_config(digits_config(digits_weights, tmp_path, tracking={"mlflow_url": "x"}))


def test_the_starter_config_shows_the_tracking_defaults():
    from nhle_pipeline.pipeline.config_reference import starter_yaml

    text = starter_yaml()
    assert parse_config(yaml.safe_load(text)).tracking == TrackingConfig()
    assert yaml.safe_load(text)["tracking"] == TrackingConfig().model_dump()


def test_without_tracking_mlflow_is_never_imported(tmp_path):
    code = (
        "import sys\n"
        "import nhle_pipeline.pipeline.cli, nhle_pipeline.pipeline.run\n"
        "from nhle_pipeline.pipeline.config import TrackingConfig\n"
        "from nhle_pipeline.pipeline.tracking import open_tracker\n"
        "assert open_tracker(TrackingConfig()) is None\n"
        "assert open_tracker(TrackingConfig(mlflow_uri='file:///x'), __import__("
        "'nhle_pipeline.pipeline.distributed', fromlist=['Group']).Group(rank=1, world=2)) is None\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"  # neither without the URI nor on a rank other than 0


def test_missing_mlflow_is_exit_2_before_any_work(make_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    cfg = make_config(tracking={"mlflow_uri": (tmp_path / "mlruns").as_uri()})
    r = CliRunner().invoke(cli, ["run", str(cfg)])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: tracking.mlflow_uri: "), r.output
    assert "pip install 'nhle-pipeline[tracking]'" in lines[0]
    assert not (tmp_path / "releases").exists() and not (tmp_path / "mlruns").exists()


def test_an_unsupported_tracking_uri_is_exit_2_before_any_work(make_config, tmp_path):
    cfg = make_config(tracking={"mlflow_uri": "ftp://mlflow.example/x"})
    r = CliRunner().invoke(cli, ["run", str(cfg)])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [r.output.strip()]
    assert "tracking.mlflow_uri: 'ftp' URIs are not supported" in r.output
    assert not (tmp_path / "releases").exists()


@pytest.mark.slow
def test_a_release_is_logged_with_its_numbers_gates_and_files(make_config, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(ALLOW, raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    path = make_config(tracking={"mlflow_uri": uri, "experiment": "unlearning-tests", "run_name": "req-1"})
    result = run_pipeline(load_config(path), path)
    assert ALLOW not in os.environ  # the file store's opt-in lasted only while logging
    m, release = result.manifest, result.path
    assert "tracking" not in m.config  # the manifest records the request, not where it was logged

    client = _client(uri, monkeypatch)
    run = _only_run(client, "unlearning-tests")
    assert run.info.status == "FINISHED" and run.info.run_name == "req-1"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags

    # parameters: the validated config flattened, the request, the versions
    assert params["forget.classes"] == "[0]" and params["forget_classes"] == "0"
    assert params["forget_class_names"] == "0" and params["method"] == "nhle-cwm"
    assert params["model.arch"] == "mlp" and params["unlearn.cwm.mode"] == "calibrated"
    assert params["forget.samples_per_class"] == "16" and params["seed"] == "0"
    assert params["config_sha256"] == m.config_sha256 and params["source_model.sha256"] == m.source_model.sha256
    assert params["versions.torch"] == m.runtime.versions["torch"]
    assert params["versions.onnxruntime"] == m.runtime.versions["onnxruntime"]
    assert set(flatten(m.config)) <= set(params) and not any(k.startswith("tracking") for k in params)

    # metrics: the manifest's numbers, exactly
    met, ev = m.metrics, m.metrics.evidence
    assert metrics["original.acc_f"] == met.original.acc_f == 1.0
    assert metrics["unlearned.acc_f"] == met.unlearned.acc_f == metrics["acc_f"] <= 0.01
    assert metrics["original.acc_r"] == met.original.acc_r > 0.9
    assert metrics["unlearned.acc_r"] == met.unlearned.acc_r > 0.9
    assert metrics["delta_acc_r"] == met.delta_acc_r == pytest.approx(met.unlearned.acc_r - met.original.acc_r)
    for who in ("original", "unlearned"):
        for key in ("ratio_d", "probe_auc", "mia_efficacy"):
            assert metrics[f"{who}.{key}"] == getattr(getattr(ev, who), key)
    assert metrics["unlearned.ratio_d"] < metrics["original.ratio_d"]
    assert metrics["parity_max_abs"] == met.parity_max_abs <= 1e-3
    assert metrics["nhle.steps"] == met.nhle.steps > 0 and metrics["cwm.bias"] == met.cwm.bias
    assert {k: v for k, v in metrics.items() if k.startswith("gate.")} == {f"gate.{g.name}": 1.0 for g in m.gates}
    assert metrics["passed"] == 1.0
    assert {k.removeprefix("timing_s."): v for k, v in metrics.items() if k.startswith("timing_s.")} == m.timings_s
    assert "release" in m.timings_s

    # the verdict as tags, and the release as artifacts
    sealed = json.loads((release / "manifest.json").read_text())
    assert tags["status"] == "released" and "gates.failed" not in tags
    assert tags["release.name"] == "digits-test" and tags["release.path"] == str(release.resolve())
    assert tags["manifest_sha256"] == sealed["manifest_sha256"]
    logged = _artifacts(client, run.info.run_id, "release")
    assert {"release/model.onnx", "release/manifest.json", "release/report.md", "release/report.html",
            "release/triton/digits-test/config.pbtxt", "release/triton/digits-test/1/model.onnx"} <= set(logged)
    assert len(logged) == len(list(p for p in release.rglob("*") if p.is_file()))
    down = Path(client.download_artifacts(run.info.run_id, "release", str(tmp_path / "down")))
    assert _sha256(down / "model.onnx") == _sha256(release / "model.onnx") == sealed["files"]["model.onnx"]["sha256"]
    assert (down / "manifest.json").read_bytes() == (release / "manifest.json").read_bytes()

    # a tracking failure: one warning line, the release untouched, nothing raised
    before = file_digests(release, exclude=())
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.delenv(ALLOW)
    with caplog.at_level("WARNING", logger="nhle_pipeline.pipeline.tracking"):
        assert Tracker(TrackingConfig(mlflow_uri=str(blocker))).log(release) is None
    [record] = [r for r in caplog.records if r.name == "nhle_pipeline.pipeline.tracking"]
    assert record.getMessage().startswith("warning: tracking: ") and "\n" not in record.getMessage()
    assert "nothing was logged; the run's outcome stands" in record.getMessage()
    assert file_digests(release, exclude=()) == before and ALLOW not in os.environ

    # a run that breaks halfway is marked FAILED, and says so
    from mlflow.tracking import MlflowClient

    def refuse(*args, **kwargs):
        raise OSError("artifact store full")

    monkeypatch.setattr(MlflowClient, "log_artifact", refuse)
    caplog.clear()
    tracker = Tracker(TrackingConfig(mlflow_uri=uri, experiment="broken"))
    assert tracker.log(release) is None
    assert f"MLflow run {tracker.run_id} is incomplete (marked FAILED)" in caplog.records[-1].getMessage()
    assert "artifact store full" in caplog.records[-1].getMessage()
    client = _client(uri, monkeypatch)
    assert _only_run(client, "broken").info.status == "FAILED"


@pytest.mark.slow
def test_a_failed_gate_is_logged_as_gate_failed_with_its_report(make_config, tmp_path, monkeypatch):
    store = tmp_path / "store"  # a plain folder path is MLflow's file store too
    path = make_config(unlearn={"nhle": {"enabled": False}, "cwm": {"mode": "none"}},
                       tracking={"mlflow_uri": str(store)})
    with pytest.raises(GateFailure) as failure:
        run_pipeline(load_config(path), path)
    staging = Path(failure.value.report_dir)
    m = json.loads((staging / "manifest.json").read_text())
    assert not (tmp_path / "releases" / "digits-test").exists()

    client = _client(store.as_uri(), monkeypatch)
    run = _only_run(client, "nhle-pipeline")
    assert run.info.status == "FINISHED" and run.info.run_name == "digits-test"
    tags, metrics = run.data.tags, run.data.metrics
    failed = [g["name"] for g in m["gates"] if not g["passed"]]
    assert "nhle_completed" in failed
    assert tags["status"] == "gate_failed" and tags["gates.failed"] == ",".join(failed)
    assert tags["staging.path"] == str(staging.resolve()) and "manifest_sha256" not in tags
    assert metrics["passed"] == 0.0 and metrics["gate.nhle_completed"] == 0.0
    assert {k: v for k, v in metrics.items() if k.startswith("gate.")} == {
        f"gate.{g['name']}": float(g["passed"]) for g in m["gates"]}
    assert metrics["unlearned.acc_f"] == m["metrics"]["unlearned"]["acc_f"] > 0.9  # nothing was forgotten
    assert metrics["nhle.steps"] == 0 and "cwm.bias" not in metrics  # CWM off: no bias to log
    logged = set(_artifacts(client, run.info.run_id, "staging"))
    assert {"staging/manifest.json", "staging/report.md", "staging/report.html", "staging/model.onnx"} <= logged
    assert not any(p.startswith("staging/.work") for p in logged)
    assert yaml.safe_load(path.read_text())["tracking"]["mlflow_uri"] == str(store)


def test_only_rank_0_tracks():
    assert open_tracker(TrackingConfig(mlflow_uri="file:///x"), Group(rank=1, world=2)) is None
