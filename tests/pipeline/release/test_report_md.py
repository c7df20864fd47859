"""report.md renders from the typed manifest alone."""

from __future__ import annotations

from nhle_pipeline.pipeline.release.manifest import FileDigest
from nhle_pipeline.pipeline.release.report_md import nhle_settings_line, render_report
from tests.manifests import sample_manifest


def test_report_shows_verdict_gates_accuracy_and_files():
    m = sample_manifest()
    m.files = {"model.onnx": FileDigest(sha256="ef" * 32, bytes=1234)}
    text = render_report(m)
    assert "**Verdict: RELEASED**" in text
    assert "| acc_f | 0.0000 | <= 0.0100 | ✓ pass |" in text
    assert "| Acc_R | 0.9600 | 0.9500 | -0.0100 |" in text
    assert "| 0 (forgotten) | 0.9000 | 0.0000 |" in text
    assert f"| model.onnx | `{'ef' * 32}` | 1234 |" in text
    assert "- CWM mode: suppress" in text


def test_failed_gate_and_missing_values_read_as_such():
    m = sample_manifest(status="gate_failed", passed=False)
    m.gates[0].passed = False
    m.metrics.evidence.unlearned.probe_auc = float("nan")
    text = render_report(m)
    assert "NOT RELEASED: a gate failed" in text and "✗ FAIL" in text
    assert "| probe_auc | 1.0000 | n/a |" in text


def test_nhle_settings_line_says_which_data_ran():
    nh = sample_manifest().metrics.nhle
    assert nhle_settings_line(nh).endswith("data: forget samples only")
    nh.n_retained_samples = 72
    assert nhle_settings_line(nh).endswith("data: forget samples + 72 retained samples")
    nh.settings = None
    assert nhle_settings_line(nh) == "not recorded"
