"""`pipeline quantize` and `pipeline verify DERIVED --parent PARENT` through the CLI: exit codes,
one error line for bad arguments, nothing written unless released."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from nhle_pipeline.pipeline.cli import cli
from tests.test_bad_inputs import snapshot

pytestmark = pytest.mark.slow


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture()
def parent(digits_release, tmp_path) -> Path:
    """A private copy of the session's digits release, in tmp_path/releases/."""
    dst = tmp_path / "releases" / digits_release.name
    shutil.copytree(digits_release, dst)
    return dst


def test_quantize_releases_and_verify_checks_the_chain(parent, tmp_path):
    out = tmp_path / "releases" / "digits-int8"
    r = invoke("quantize", parent, "--mode", "int8-static", "--out", out, "--calibration-samples", 256)
    assert r.exit_code == 0, r.output
    assert f"released {out}" in r.output and "[✓] agreement" in r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["derived"]["precision"] == "int8-static" and m["derived"]["calibration_samples"] == 256
    assert m["derived"]["parent"]["name"] == parent.name and m["status"] == "released"

    before = snapshot(tmp_path)
    v = invoke("verify", out, "--parent", parent)
    assert v.exit_code == 0, v.output
    assert "verdict: pass" in v.output and "chain: the parent" in v.output
    assert snapshot(tmp_path) == before  # verify never writes

    # the parent's model swapped for the derived one, re-listed and re-sealed: the chain breaks
    from nhle_pipeline.pipeline.release.manifest import MANIFEST_SEAL, manifest_seal

    pm = json.loads((parent / "manifest.json").read_text())
    pm["timings_s"]["load"] = 99.0
    pm[MANIFEST_SEAL] = manifest_seal(pm)
    (parent / "manifest.json").write_text(json.dumps(pm))
    v = invoke("verify", out, "--parent", parent)
    assert v.exit_code == 2, v.output
    lines = [ln for ln in v.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --parent:") and "has seal" in lines[0]


def test_a_broken_derivative_exits_1_and_releases_nothing(digits_weights, tmp_path):
    """cwm.mode suppress (-1e4): static INT8's output range is spent on the masked bias."""
    from tests.conftest import digits_config, write_config

    cfg = write_config(tmp_path / "s.yaml", digits_config(
        digits_weights, tmp_path / "releases", release={"name": "sup"}, unlearn={"cwm": {"mode": "suppress"}}))
    assert invoke("run", cfg).exit_code == 0
    out = tmp_path / "releases" / "sup-int8"
    r = invoke("quantize", tmp_path / "releases" / "sup", "--mode", "int8-static", "--out", out)
    assert r.exit_code == 1, r.output
    assert "[✗] acc_r_drop" in r.output and "[✗] agreement" in r.output and "nothing released" in r.output
    assert not out.exists()


@pytest.mark.parametrize("case", [
    "not-a-release", "a-file", "unknown-mode", "zero-samples", "negative-samples", "existing-out",
    "tampered-parent", "out-is-parent", "no-out", "agreement-above-1",
])
def test_bad_arguments_are_one_line_exit_2_and_write_nothing(case, parent, tmp_path):
    out = tmp_path / "releases" / "derived"
    args = [parent, "--mode", "fp16", "--out", out]
    if case == "not-a-release":
        (tmp_path / "empty").mkdir()
        args[0] = tmp_path / "empty"
    elif case == "a-file":
        args[0] = parent / "model.onnx"
    elif case == "unknown-mode":
        args[2] = "int4"
    elif case == "zero-samples":
        args += ["--calibration-samples", "0"]
    elif case == "negative-samples":
        args += ["--calibration-samples", "-5"]
    elif case == "existing-out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "tampered-parent":
        with open(parent / "model.onnx", "ab") as f:
            f.write(b"\0")
    elif case == "out-is-parent":
        args[4] = parent
        args.append("--force")
    elif case == "no-out":
        args = args[:3]
    elif case == "agreement-above-1":
        args += ["--agreement-min", "1.5"]
    before = snapshot(tmp_path)
    r = invoke("quantize", *args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    assert snapshot(tmp_path) == before, "a refused quantize wrote something"
    expect = {"not-a-release": "missing; not a release folder", "a-file": "is a file",
              "unknown-mode": "'int4' is not one of", "zero-samples": "0 is not in the range x>=1",
              "negative-samples": "-5 is not in the range x>=1", "existing-out": "already exists; use --force",
              "tampered-parent": "sha256 differs from the manifest", "out-is-parent": "overlaps the parent release",
              "no-out": "Missing option '--out'", "agreement-above-1": "1.5 is not in the range"}[case]
    assert expect in lines[0], lines[0]
