"""report.html renders in a real headless browser: gates table and inline images.

Skips with a clear reason where no Chromium is installed (`.ci/run` installs
Debian's chromium package when it can).
"""

import re
import shutil
import subprocess

import numpy as np
import pytest

from nhle_pipeline.pipeline.release.report_html import render_html

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Headless flags for a closed network, as root, in a throwaway profile.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=5000", "--dump-dom",
]


def manifest() -> dict:
    per = [0.9, 0.95, 0.97]
    return {
        "name": "demo", "status": "released", "method": "nhle-cwm", "forget_classes": [0], "seed": 0,
        "config_sha256": "ab" * 32,
        "source_model": {"path": "runs/m.safetensors", "arch": "mlp", "sha256": "cd" * 32},
        "metrics": {
            "original": {"acc_f": 0.9, "acc_r": 0.96, "per_class": per},
            "unlearned": {"acc_f": 0.0, "acc_r": 0.95, "per_class": [0.0, 0.94, 0.96]},
            "reference": None, "delta_acc_r": -0.01,
            "evidence": {
                "original": {"ratio_d": 4.0, "d_inter": 8.0, "d_intra": 2.0, "probe_auc": 1.0, "mia_efficacy": 0.0},
                "unlearned": {"ratio_d": 3.0, "d_inter": 6.0, "d_intra": 2.0, "probe_auc": 0.99, "mia_efficacy": 1.0},
                "reference": None, "gap_to_reference": None,
            },
        },
        "gates": [
            {"name": "acc_f", "value": 0.0, "threshold": 0.01, "op": "<=", "passed": True, "description": "d"},
            {"name": "acc_r_drop", "value": -0.01, "threshold": -0.035, "op": ">=", "passed": True, "description": "d"},
        ],
        "runtime": {"torch_device": "cpu", "onnxruntime_provider": "CPUExecutionProvider", "versions": {"torch": "x"}},
        "timings_s": {"load": 1.0, "verify": 0.5},
    }


def features():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    return {"original": (rng.normal(size=(90, 8)) + y[:, None], y), "unlearned": (rng.normal(size=(90, 8)), y)}


def test_html_is_self_contained_with_gates_and_images():
    page = render_html(manifest(), features())
    assert page.count('src="data:image/png;base64,') == 2
    assert "http://" not in page and "https://" not in page
    assert 'id="gates"' in page and "acc_r_drop" in page and "✓" in page
    assert "Ratio_D" in page and 'id="evidence"' in page


def test_renders_in_headless_chromium(tmp_path):
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        pytest.skip("no Chromium on PATH (install Debian's 'chromium' package to run this test)")
    page = tmp_path / "report.html"
    page.write_text(render_html(manifest(), features()), encoding="utf-8")
    out = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    dom = out.stdout
    assert "<table" in dom, out.stderr[-2000:]
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    assert loaded and int(loaded.group(1)) == 2, "both inline images must decode"
    gates = re.search(r'<table id="gates">.*?</table>', dom, re.S).group(0)
    assert gates.count("<tr>") == 3 and "acc_f" in gates and "✓" in gates
