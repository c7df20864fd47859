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
from tests.manifests import sample_manifest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Headless flags for a closed network, as root, in a throwaway profile.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=5000", "--dump-dom",
]


def features():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    return {"original": (rng.normal(size=(90, 8)) + y[:, None], y), "unlearned": (rng.normal(size=(90, 8)), y)}


def test_html_is_self_contained_with_gates_and_images():
    page = render_html(sample_manifest(), features())
    assert page.count('src="data:image/png;base64,') == 2
    assert "http://" not in page and "https://" not in page
    assert 'id="gates"' in page and "acc_r_drop" in page and "✓" in page
    assert "Ratio_D" in page and 'id="evidence"' in page


def test_renders_in_headless_chromium(tmp_path):
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        pytest.skip("no Chromium on PATH (install Debian's 'chromium' package to run this test)")
    page = tmp_path / "report.html"
    page.write_text(render_html(sample_manifest(), features()), encoding="utf-8")
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
