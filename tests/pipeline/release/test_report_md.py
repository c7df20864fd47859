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
    assert "| acc_f | 0 | <= 0.01 | ✓ pass |" in text
    # counts and 95 % Wilson intervals: 57 of 60 retained -> [0.863, 0.983]; 0 of 30 forgotten -> [0, 0.114]
    assert "| Acc_R | 60 | 0.9600 | [0.886, 0.991] | 0.9500 | [0.863, 0.983] | -0.0100 |" in text
    assert "| Acc_F | 30 | 0.9000 | [0.744, 0.965] | 0.0000 | [0.000, 0.114] | -0.9000 |" in text
    assert "ΔAcc_R -0.0100, 95 % interval [-0.102, +0.071]" in text
    assert "| 0 (forgotten) | 0.9000 | 0.0000 | -0.9000 |" in text
    assert f"| model.onnx | `{'ef' * 32}` | 1,234 |" in text
    assert f"- model.onnx sha256 `{'ef' * 32}` (1,234 bytes)" in text
    assert "- CWM mode: suppress" in text
    assert "- **Ratio_D**: D_inter / D_intra" in text


def test_class_names_label_the_per_class_rows():
    text = render_report(sample_manifest(class_names=["cat", "dog", "eel"]), created="2026-01-02 03:04:05 UTC")
    assert "| 0 cat (forgotten) | 0.9000 | 0.0000 | -0.9000 |" in text and "| 2 eel | 0.9700 | 0.9600 | -0.0100 |" in text
    assert "- created 2026-01-02 03:04:05 UTC" in text


def test_failed_gate_and_missing_values_read_as_such():
    m = sample_manifest(status="gate_failed", passed=False)
    m.gates[0] = m.gates[0].model_copy(update={"passed": False})
    m.metrics.evidence.unlearned = m.metrics.evidence.unlearned.model_copy(update={"probe_auc": float("nan")})
    text = render_report(m)
    assert "NOT RELEASED: gate(s) failed: acc_f**" in text and "✗ FAIL" in text  # the headline names it
    assert "| probe_auc | 1.0000 | n/a |" in text


def test_nhle_settings_line_says_which_data_ran():
    nh = sample_manifest().metrics.nhle
    assert nhle_settings_line(nh).endswith("data: forget samples only")
    nh.n_retained_samples = 72
    assert nhle_settings_line(nh).endswith("data: forget samples + 72 retained samples")
    nh.settings = None
    assert nhle_settings_line(nh) == "not recorded"


def test_only_what_ran_is_defined_and_failed_gates_stand_out():
    m = sample_manifest(status="gate_failed", passed=False)
    m.gates[1] = m.gates[1].model_copy(update={"passed": False})
    text = render_report(m)
    assert "**relearning**" not in text  # it did not run in this manifest
    assert "| **acc_r_drop** | -0.01 | >= -0.035 | **✗ FAIL** |" in text
    assert "NOT RELEASED: gate(s) failed: acc_r_drop**" in text
