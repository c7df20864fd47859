"""write_release_files: the reports list the files written before them, the manifest lists all."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from nhle_pipeline.pipeline.release.package import write_release_files
from tests.manifests import sample_manifest


def test_reports_list_the_files_and_the_model_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")  # 2026-01-01 00:00:00 UTC
    (tmp_path / "triton" / "demo" / "1").mkdir(parents=True)
    (tmp_path / "model.onnx").write_bytes(b"onnx bytes")
    (tmp_path / "triton" / "demo" / "1" / "model.onnx").write_bytes(b"onnx bytes")
    (tmp_path / "triton" / "demo" / "config.pbtxt").write_text('name: "demo"\n')
    y = np.repeat([0, 1, 2], 10)
    write_release_files(tmp_path, sample_manifest(), {"original": (np.random.default_rng(0).normal(size=(30, 4)), y)})
    digest = hashlib.sha256(b"onnx bytes").hexdigest()
    md = (tmp_path / "report.md").read_text()
    assert f"| model.onnx | `{digest}` | 10 |" in md and f"| triton/demo/1/model.onnx | `{digest}` | 10 |" in md
    assert "| triton/demo/config.pbtxt |" in md and f"- model.onnx sha256 `{digest}`" in md
    assert "- created 2026-01-01 00:00:00 UTC" in md
    html = (tmp_path / "report.html").read_text()
    assert f'<code id="model-sha256">{digest}</code>' in html and "2026-01-01 00:00:00 UTC" in html
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.onnx", "triton/demo/1/model.onnx", "triton/demo/config.pbtxt",
                                      "report.md", "report.html"}
    assert manifest["files"]["report.md"]["sha256"] == hashlib.sha256((tmp_path / "report.md").read_bytes()).hexdigest()
