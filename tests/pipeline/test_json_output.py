"""--json: one typed JSON document on stdout, valid against the command's committed schema."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import jsonschema
import pytest
from click.testing import CliRunner

from nhle_pipeline.pipeline.cli import cli
from nhle_pipeline.pipeline.output import Document, plain, schema
from tests.onnx_models import tiny_onnx

PROVENANCE = {"unlearning.method": "nhle-cwm", "unlearning.forget_classes": "0,3", "unlearning.num_classes": "10",
              "unlearning.config_sha256": "ab" * 32, "unlearning.source_model_sha256": "",
              "unlearning.class_names": json.dumps([f"c{i}" for i in range(10)]), "unlearning.cwm_mode": "calibrated"}


def invoke(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return r, json.loads(r.stdout)  # stdout holds exactly one JSON document, nothing else


def validated(doc: dict) -> dict:
    jsonschema.Draft202012Validator(schema(doc["command"])).validate(doc)
    return doc


@pytest.mark.parametrize("command", ["run", "verify", "inspect", "train"])
def test_schemas_are_valid_draft_2020_12(command):
    jsonschema.Draft202012Validator.check_schema(schema(command))


def test_a_document_that_breaks_its_schema_is_refused():
    doc = json.loads(Document("inspect").render(2, "x: y"))
    validated(doc)
    with pytest.raises(jsonschema.ValidationError):
        validated({**doc, "exit_code": 0})  # success needs every field, and ok true
    with pytest.raises(jsonschema.ValidationError):
        validated({**doc, "exit_code": "2"})  # typed: a number, not a string


def test_plain_makes_strict_json():
    assert plain({"a": float("nan"), "b": (1, math.inf), "c": 0.5}) == {"a": None, "b": [1, None], "c": 0.5}


def test_inspect_json_is_typed(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx", metadata=PROVENANCE)
    r, doc = invoke("inspect", "--json", model)
    assert r.exit_code == 0 and validated(doc)["ok"] is True and doc["error"] is None
    prov = doc["provenance"]
    assert prov["forget_classes"] == [0, 3] and prov["num_classes"] == 10 and prov["source_model_sha256"] is None
    assert prov["class_names"][3] == "c3" and prov["method"] == "nhle-cwm"
    assert doc["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 1, 4, 4]}]
    assert doc["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 3]}]
    assert doc["opset"] == 18 and doc["ir_version"] == 9
    assert doc["op_counts"] == {"Flatten": 1, "Gemm": 1, "Relu": 1} and doc["nodes"] == 3
    assert doc["parameters"] == 3 * 16 + 3 and doc["bytes"] == model.stat().st_size
    assert doc["signature"] == {"status": "not-in-release", "release": None, "key_sha256": None}


def test_inspect_human_view_names_tensors_and_sizes(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx", metadata=PROVENANCE)
    out = CliRunner().invoke(cli, ["inspect", str(model)]).stdout
    assert "input                  input  float32  (batch, 1, 4, 4)" in out
    assert "nodes                  3: Flatten 1, Gemm 1, Relu 1" in out
    assert "forget_classes         0,3" in out and f"{model.stat().st_size:,} bytes" in out


def test_inspect_reports_the_release_signature(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec

    from nhle_pipeline.pipeline.release.signing import load_signing_key, sign_release
    from tests.pipeline.release.test_signing import _pem, _pub

    rel = tmp_path / "rel"
    rel.mkdir()
    model = tiny_onnx(rel / "model.onnx")
    _, doc = invoke("inspect", "--json", model)
    assert doc["signature"]["status"] == "not-in-release"
    (rel / "manifest.json").write_text("{}")
    assert invoke("inspect", "--json", model)[1]["signature"]["status"] == "unsigned"
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "k.pem").write_bytes(_pem(key))
    (tmp_path / "k.pub").write_bytes(_pub(key))
    sign_release(rel, load_signing_key(tmp_path / "k.pem"))
    assert validated(invoke("inspect", "--json", model)[1])["signature"]["status"] == "present"
    r, doc = invoke("inspect", "--json", "--public-key", tmp_path / "k.pub", model)
    assert validated(doc)["signature"]["status"] == "verified" and len(doc["signature"]["key_sha256"]) == 64
    (rel / "manifest.json").write_text('{"edited": true}')
    r, doc = invoke("inspect", "--json", "--public-key", tmp_path / "k.pub", model)
    assert r.exit_code == 2 and validated(doc)["exit_code"] == 2 and "release.sig" in doc["error"]


def test_errors_are_documents_with_the_exit_code(tmp_path):
    r, doc = invoke("inspect", "--json", tmp_path / "missing.onnx")
    assert r.exit_code == 2 and validated(doc)["ok"] is False and doc["error"].endswith("missing.onnx: no such ONNX file")
    assert "error: " in r.stderr  # the human line still goes to stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {arch: mlp}\n")
    for command in ("run", "train"):
        r, doc = invoke(command, "--json", bad)
        assert r.exit_code == 2 and validated(doc)["command"] == command
        assert "model.num_classes: required" in doc["error"] and "forget: required" in doc["error"]
    r, doc = invoke("verify", "--json", tmp_path)
    assert r.exit_code == 2 and validated(doc)["error"]


@pytest.mark.slow
def test_train_run_verify_inspect_json_on_digits(make_config, tmp_path):
    cfg = make_config(model={"weights": str(tmp_path / "w.safetensors")})
    pipe = [sys.executable, "-m", "nhle_pipeline.pipeline"]

    def call(*args):
        r = subprocess.run([*pipe, *map(str, args)], capture_output=True, text=True, timeout=600)
        return r, validated(json.loads(r.stdout))

    r, doc = call("train", "--json", cfg)
    assert r.returncode == 0 and doc["test_accuracy"] > 0.9 and doc["sha256"] and doc["epochs"] == 25
    assert "trained mlp" in r.stderr  # human output on stderr
    r, doc = call("run", "--json", cfg)
    assert r.returncode == 0, r.stderr
    assert doc["status"] == "released" and doc["released"] is True and doc["passed"] is True
    assert doc["forget_classes"] == [0] and doc["metrics"]["unlearned"]["acc_f"] <= 0.01
    assert isinstance(doc["metrics"]["delta_acc_r"], float) and {g["name"] for g in doc["gates"]} >= {"acc_f"}
    assert "Acc_F" in r.stderr
    rel = tmp_path / "releases" / "digits-test"
    manifest = json.loads((rel / "manifest.json").read_text())
    assert doc["model_sha256"] == manifest["files"]["model.onnx"]["sha256"]
    r, doc = call("verify", "--json", rel)
    assert r.returncode == 0 and doc["passed"] is True and doc["signature"]["status"] == "unsigned"
    assert doc["metrics"]["acc_f"] == manifest["metrics"]["acc_f"]
    r, doc = call("verify", "--json", "--probe-auc-max", "0.5", rel)  # digits keeps probe AUC 1.0: exit 1
    assert r.returncode == 1 and doc["passed"] is False and doc["exit_code"] == 1
    assert [g["name"] for g in doc["gates"] if not g["passed"]] == ["probe_auc"]
    r, doc = call("inspect", "--json", rel / "model.onnx")
    assert doc["provenance"]["forget_classes"] == [0] and doc["signature"]["status"] == "unsigned"
    assert doc["inputs"][0]["shape"][1:] == [1, 8, 8] and doc["outputs"][0]["shape"][1:] == [10]

    # a failed gate: exit 1, the staging manifest's numbers, no release
    failing = make_config("fail.yaml", unlearn={"nhle": {"enabled": False}, "cwm": {"mode": "none"}},
                          release={"name": "digits-fail"})
    r, doc = call("run", "--json", failing)
    assert r.returncode == 1 and doc["status"] == "gate_failed" and doc["release"] is None
    assert doc["report_dir"] and "acc_f" in [g["name"] for g in doc["gates"] if not g["passed"]]
