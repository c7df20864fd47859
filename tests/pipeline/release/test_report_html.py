"""report.html: rendered by Jinja2 from the manifest, checked in a real headless browser at
a phone's width (420 px) and a desktop's (1280 px): no table wider than the page, every
image decoded.

Skips with a clear reason where no Chromium is installed (`.ci/run` installs
Debian's chromium package when it can).
"""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from nhle_pipeline.pipeline.release.manifest import FileDigest, GapRecord
from nhle_pipeline.pipeline.release.report_html import render_html
from tests.manifests import sample_manifest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Headless flags for a closed network, as root, in a throwaway profile.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--virtual-time-budget=5000", "--dump-dom",
]
# Appended to a copy of the page by the test (not shipped): measures the layout once
# everything has loaded and writes the result into the top document, which --dump-dom
# prints. The page runs in an iframe of the exact width: headless Chromium's windows are
# at least 500 px wide.
MEASURE = """<script>
window.addEventListener("load", function () {
  var page = document.documentElement.clientWidth;
  var wide = Array.prototype.slice.call(document.querySelectorAll("table")).filter(function (t) {
    var r = t.getBoundingClientRect();
    return r.left < -0.5 || r.right > page + 0.5 || t.scrollWidth > t.clientWidth + 1;
  }).map(function (t) { return t.id + ":" + Math.round(t.getBoundingClientRect().width); });
  var imgs = Array.prototype.slice.call(document.images);
  // the smallest chart text as displayed: its size in the PNG, scaled as the page shows the image
  var shown = imgs.filter(function (i) { return i.getBoundingClientRect().width > 0; });
  var text = shown.map(function (i) {
    return parseFloat(i.getAttribute("data-text-px")) * i.getBoundingClientRect().width / i.naturalWidth;
  });
  var out = {viewport: window.innerWidth, page: page, scroll: document.documentElement.scrollWidth,
             shown: shown.map(function (i) { return i.closest("figure").id; }),
             min_text_px: text.length ? Math.min.apply(null, text) : null,
             // the narrowest label column: a label squeezed to a letter per line is unreadable
             min_label_px: Math.min.apply(null, Array.prototype.slice.call(
               document.querySelectorAll("#evidence tbody td:first-child, #per-class tbody td:first-child"))
               .map(function (td) { return td.getBoundingClientRect().width; })),
             overflowing: wide, images: imgs.length,
             decoded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
             tables: document.querySelectorAll("table").length,
             gates_rows: document.querySelectorAll("#gates tr").length,
             loaded_attr: document.body.getAttribute("data-images-loaded")};
  var top = window.parent.document;
  var pre = top.createElement("pre"); pre.id = "measured"; pre.textContent = JSON.stringify(out);
  top.body.appendChild(pre);
});
</script>"""
CLASS_NAMES = ["airplane", "automobile", "bird"]


def features():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    return {"original": (rng.normal(size=(90, 8)) + y[:, None], y), "unlearned": (rng.normal(size=(90, 8)), y)}


def manifest(**overrides):
    m = sample_manifest(**overrides)
    m.files = {"model.onnx": FileDigest(sha256="ef" * 32, bytes=123_456),
               "triton/demo/config.pbtxt": FileDigest(sha256="0a" * 32, bytes=512)}
    return m


def test_html_is_self_contained_with_gates_and_images():
    page = render_html(manifest(), features(), created="2026-01-02 03:04:05 UTC")
    assert page.count('src="data:image/png;base64,') == 2
    assert page.count('srcset="data:image/png;base64,') == 1  # the PCA stacked for a phone
    assert "http://" not in page and "https://" not in page
    assert 'id="gates"' in page and "acc_r_drop" in page and "✓" in page
    assert "Ratio_D" in page and 'id="evidence"' in page
    assert "ef" * 32 in page and "created 2026-01-02 03:04:05 UTC" in page  # the model's digest, the time
    assert "verify/evidence.py" not in page and "<dt>Ratio_D</dt>" in page and "<dt>MIA-efficacy</dt>" in page
    # sample counts and Wilson intervals: 0 of 30 forgotten images -> [0, 0.114]
    acc = re.search(r'<table id="accuracy">.*?</table>', page, re.S).group(0)
    assert "<td>Acc_F</td><td class=\"n\">30</td>" in acc and "[0.000, 0.114]" in acc
    assert "[0.863, 0.983]" in acc  # Acc_R 57 of 60
    assert "<th></th>" not in page  # no empty header cells
    files = re.search(r'<table id="files">.*?</table>', page, re.S).group(0)
    assert "triton/demo/config.pbtxt" in files and "123,456" in files


def test_class_names_and_forgotten_classes_are_marked():
    page = render_html(manifest(class_names=CLASS_NAMES), features())
    per_class = re.search(r'<table id="per-class">.*?</table>', page, re.S).group(0)
    assert '<tr class="forgotten"><td>0 airplane (forgotten)</td>' in per_class
    assert "<td>1 automobile</td>" in per_class and per_class.count("<tr") == 4
    assert "forgotten: 0 airplane" in page


def test_names_cannot_inject_markup():
    page = render_html(manifest(name="x<script>alert(1)</script>", class_names=["<b>a</b>", "b", "c"]), features())
    assert "<script>alert(1)" not in page and "&lt;script&gt;" in page and "<b>a</b>" not in page


def test_one_pca_for_every_panel_needs_equal_feature_widths():
    f = features()
    f["retrained reference"] = (np.zeros((90, 5)), f["original"][1])  # another width: no common projection
    assert render_html(manifest(), f).count('src="data:image/png;base64,') == 1


def _browser():
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        pytest.skip("no Chromium on PATH (install Debian's 'chromium' package to run this test)")
    return browser


def _measure(browser, tmp_path, html: str, width: int) -> tuple[dict, str]:
    import html as html_lib

    measured = html_lib.escape(html.replace("</body>", MEASURE + "\n</body>"), quote=True)
    page = tmp_path / f"frame-{width}.html"
    page.write_text(f'<!doctype html><html><body style="margin:0"><iframe srcdoc="{measured}" '
                    f'style="width:{width}px;height:900px;border:0"></iframe></body></html>', encoding="utf-8")
    out = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--window-size={width + 200},1000",
         f"--user-data-dir={tmp_path / f'profile-{width}'}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    found = re.search(r'<pre id="measured">(.*?)</pre>', out.stdout, re.S)
    assert found, out.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"')), out.stdout


@pytest.mark.parametrize("width", [420, 1280])
@pytest.mark.parametrize("released", [True, False])
def test_renders_in_headless_chromium_without_overflow(tmp_path, width, released):
    """At a phone's width and a desktop's, released and failed: no table wider than the page, every
    image decoded, chart text at least 11 px as shown (the per-class chart gives way to its table
    on a phone; the PCA panels stack)."""
    browser = _browser()
    many = sample_manifest(num_classes=3, class_names=CLASS_NAMES, name="a-rather-long-release-name-" * 3)
    many.files = manifest().files
    ev = many.metrics.evidence  # with a retrained reference: the widest evidence table
    ev.reference = ev.unlearned.model_copy()
    ev.gap_to_reference = GapRecord(acc_f=0.0, acc_r=0.01, ratio_d=0.0, probe_auc=0.0, mia_efficacy=0.0, mean=0.0)
    if not released:
        many.status = "gate_failed"
        many.gates[0] = many.gates[0].model_copy(update={"passed": False})
    got, dom = _measure(browser, tmp_path, render_html(many, features()), width)
    assert got["viewport"] == width, got
    assert got["tables"] == 7 and got["overflowing"] == [], got
    assert got["scroll"] <= got["page"], got  # nothing makes the page scroll sideways
    assert got["images"] == 2 and got["decoded"] == 2, "both inline images must decode"
    assert got["gates_rows"] == 3 and got["loaded_attr"] == "2"  # the page's own image counter agrees
    assert got["shown"] == (["pca-chart"] if width < 640 else ["per-class-chart", "pca-chart"]), got
    assert got["min_text_px"] >= 11, got
    assert got["min_label_px"] >= 90, got
    assert ("NOT RELEASED" in dom) != released


def test_the_measurement_sees_an_overflowing_table(tmp_path):
    """The check itself can fail: a table forced wider than a 420 px page is reported."""
    browser = _browser()
    html = render_html(manifest(), features()).replace('<table id="files">', '<table id="files" style="min-width:900px">')
    got, _ = _measure(browser, tmp_path, html, 420)
    assert [t.split(":")[0] for t in got["overflowing"]] == ["files"]
