"""``report.html``: one self-contained page (plots inline as PNG data URIs).

Readable from a file system with no server: the gates table, per-class
accuracy before and after (bar chart), a 2-D PCA projection of penultimate
features before and after, the feature and privacy evidence, provenance and
stage timings. A tiny inline script marks ``<body data-images-loaded=N>`` once
the images decode, so a headless browser test can tell they rendered.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from nhle_pipeline.pipeline.release.manifest import Manifest
from nhle_pipeline.pipeline.release.report_md import nhle_settings_line
from nhle_pipeline.verify.formatting import format_value

PCA_MAX_POINTS = 2_000
EVIDENCE_ROWS = (
    ("ratio_d", "Ratio_D = D_inter / D_intra (lower: less separable)"),
    ("d_inter", "D_inter"),
    ("d_intra", "D_intra"),
    ("probe_auc", "probe ROC AUC (0.5: no leakage)"),
    ("mia_efficacy", "MIA-efficacy (higher: forget set looks unseen)"),
)


def _fmt(v) -> str:
    return html.escape(format_value(v, ".4g", ("true", "false")))


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _per_class_chart(m: Manifest) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {"original": m.metrics.original.per_class, "unlearned": m.metrics.unlearned.per_class}
    ref = m.metrics.reference
    if ref:
        series["retrained reference"] = ref.per_class
    n = len(series["original"])
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, n * 0.6), 3.2))
    for i, (label, vals) in enumerate(series.items()):
        ax.bar(np.arange(n) + i * width, np.nan_to_num(vals), width, label=label)
    ax.set_xticks(np.arange(n) + width * (len(series) - 1) / 2)
    ax.set_xticklabels([f"{c}{'*' if c in m.forget_classes else ''}" for c in range(n)])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.set_xlabel("class (* forgotten)")
    ax.legend(fontsize=8, loc="lower right")
    out = _png(fig)
    plt.close(fig)
    return out


def _pca_chart(features: dict[str, tuple[np.ndarray, np.ndarray]], forget: list[int], seed: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    fig, axes = plt.subplots(1, len(features), figsize=(4.2 * len(features), 3.8), squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, (label, (feats, y)) in zip(axes[0], features.items(), strict=True):
        idx = np.sort(rng.choice(len(y), min(len(y), PCA_MAX_POINTS), replace=False))
        xy = PCA(n_components=2, random_state=seed).fit_transform(feats[idx].astype(np.float64))
        keep = ~np.isin(y[idx], forget)
        ax.scatter(xy[keep, 0], xy[keep, 1], c=y[idx][keep], cmap="tab10", s=5, alpha=0.5, vmin=0, vmax=9)
        ax.scatter(xy[~keep, 0], xy[~keep, 1], c="black", marker="x", s=12, label="forgotten classes")
        ax.set_title(label)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=8, loc="best")
    out = _png(fig)
    plt.close(fig)
    return out


def _table(headers: list[str], rows: list[list[str]], table_id: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(m: Manifest, features: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """The report page for manifest ``m``; ``features``: label -> (test features, labels)."""
    met, ev = m.metrics, m.metrics.evidence.model_dump()
    released = m.status == "released"
    gate_rows = [
        [("✓" if g.passed else "✗"), html.escape(g.name), _fmt(g.value), f"{g.op} {_fmt(g.threshold)}",
         html.escape(g.description)]
        for g in m.gates
    ]
    acc_rows = [
        ["Acc_F", _fmt(met.original.acc_f), _fmt(met.unlearned.acc_f)],
        ["Acc_R", _fmt(met.original.acc_r), _fmt(met.unlearned.acc_r)],
        ["ΔAcc_R", "", _fmt(met.delta_acc_r)],
    ]
    cols = [k for k in ("original", "unlearned", "reference") if ev.get(k)]
    ev_rows = [[label] + [_fmt(ev[c].get(key)) for c in cols] + ([_fmt(ev["gap_to_reference"].get(key))] if ev.get("gap_to_reference") else [])
               for key, label in EVIDENCE_ROWS]
    ev_head = ["metric"] + cols + (["|unlearned − reference|"] if ev.get("gap_to_reference") else [])
    rt = m.runtime
    prov_rows = [
        ["method", html.escape(m.method)],
        ["forgotten classes", html.escape(str(m.forget_classes))],
        ["source model", f"{html.escape(m.source_model.path)} ({html.escape(m.source_model.arch)})"],
        ["source sha256", f"<code>{m.source_model.sha256}</code>"],
        ["config sha256", f"<code>{m.config_sha256}</code>"],
        ["seed", str(m.seed)],
        ["PyTorch device", html.escape(rt.torch_device)],
        ["onnxruntime provider", html.escape(rt.onnxruntime_provider)],
        ["versions", html.escape(", ".join(f"{k} {v}" for k, v in rt.versions.items()))],
    ]
    nh = met.nhle
    prov_rows.insert(2, ["unlearning", html.escape(
        f"NHLE {nh.steps} steps (stopped: {nh.stopped}); {nhle_settings_line(nh)}; CWM {m.cwm_mode}")])
    timing_rows = [[html.escape(k), f"{v:.2f}"] for k, v in m.timings_s.items()]
    images = [("Per-class test accuracy", _per_class_chart(m))]
    if features:
        images.append(("Penultimate features, PCA (test split; × = forgotten classes)",
                       _pca_chart(features, m.forget_classes, m.seed)))
    figs = "".join(f'<figure><img alt="{html.escape(t)}" src="{src}"><figcaption>{html.escape(t)}</figcaption></figure>'
                   for t, src in images)
    verdict = "RELEASED" if released else "NOT RELEASED — a gate failed"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Unlearning report: {html.escape(m.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; }}
th {{ background: #f3f3f3; }}
.verdict {{ font-size: 1.3em; font-weight: bold; color: {'#176b2c' if released else '#a01c1c'}; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }}
code {{ font-size: 0.85em; }}
</style></head>
<body data-images-loaded="0">
<h1>Unlearning report: {html.escape(m.name)}</h1>
<p class="verdict" id="verdict">{verdict}</p>
<h2>Gates</h2>
{_table(["", "gate", "value", "threshold", "what"], gate_rows, "gates")}
<h2>Accuracy (onnxruntime, test split)</h2>
{_table(["metric", "original", "unlearned"], acc_rows, "accuracy")}
<h2>Evidence of forgetting beyond accuracy</h2>
{_table(ev_head, ev_rows, "evidence")}
<p>Definitions: see <code>verify/evidence.py</code>; features are the classifier head's input.</p>
{figs}
<h2>Provenance</h2>
{_table(["", ""], prov_rows, "provenance")}
<h2>Stage timings (s)</h2>
{_table(["stage", "seconds"], timing_rows, "timings")}
<script>
(function () {{
  var imgs = Array.prototype.slice.call(document.images);
  function mark() {{
    var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
    document.body.setAttribute("data-images-loaded", String(ok));
  }}
  imgs.forEach(function (i) {{ i.addEventListener("load", mark); }});
  mark();
}})();
</script>
</body></html>
"""


def write_html_report(path: Path, manifest: Manifest, features: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    path.write_text(render_html(manifest, features), encoding="utf-8")
