"""``report.html``: one self-contained page (plots inline as PNG data URIs), rendered with
Jinja2 from ``pipeline/templates/report.html`` (autoescaped: names from a config or a data
set cannot inject markup).

Readable from a file system with no server, from a 420 px phone to a wide screen:
the verdict and the model's sha256, the gates, Acc_F / Acc_R / ΔAcc_R with sample
counts and 95 % intervals, per-class accuracy (a chart with value labels and a
change view, forgotten classes marked, class names when the manifest has them,
and the same numbers as a table, which is what a phone gets), the penultimate
features in one PCA fitted on the original and applied to every panel (each
forgotten class in its own colour, the retained ones grey; stacked on a phone),
the feature and
privacy evidence, the metric definitions, provenance, the files and their
digests, and stage timings. Every chart's smallest text is ``TEXT_PT`` at ``DPI``
(``data-text-px`` on its image), and no colour means two things. A tiny inline script marks
``<body data-images-loaded=N>`` once the images decode, so a headless browser
test can tell they rendered.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

from nhle_pipeline.pipeline.release.manifest import Manifest
from nhle_pipeline.pipeline.release.report_md import nhle_settings_line
from nhle_pipeline.pipeline.release.report_view import (
    build_view,
    definitions_for,
    failed_gates_line,
    fmt,
    fmt_interval,
    forgetting_statement,
    model_text,
    timing_text,
    total_seconds,
)
from nhle_pipeline.verify.formatting import format_gate_value

TEMPLATE = "templates/report.html"
PCA_MAX_POINTS = 2_000
EVIDENCE_ROWS = (
    ("ratio_d", "Ratio_D = D_inter / D_intra (lower: less separable)"),
    ("d_inter", "D_inter"),
    ("d_intra", "D_intra"),
    ("probe_auc", "probe ROC AUC (0.5: no leakage)"),
    ("mia_efficacy", "MIA-efficacy (higher: forget set looks unseen)"),
)
# One meaning per colour on the page: the three models' bars; the change bars (either sign);
# the forgotten classes (red first, then colours no other mark uses); every retained class in
# the PCA (one light grey: the question there is whether a forgotten class stands apart).
ORIGINAL_COLOUR, UNLEARNED_COLOUR, REFERENCE_COLOUR = "#7f8c99", "#1f6fb2", "#2e8b57"
CHANGE_COLOUR = "#34495e"
FORGOTTEN_COLOUR = "#c0392b"
FORGOTTEN_COLOURS = (FORGOTTEN_COLOUR, "#e67e22", "#8e44ad", "#d4ac0d", "#e84393", "#795548")
RETAINED_POINTS = "#b8b8b8"
DPI = 110  # pixels per inch of the PNGs: text of P points is P * DPI / 72 px at their natural size
TEXT_PT = 9  # the smallest text in every chart (value labels, ticks, legends): 13.75 px at natural size


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _literal_text():
    """Every text the charts create drawn as written: a class name like ``$\\alpha$`` is not
    mathtext (an unknown command in one would stop the report)."""
    import matplotlib

    return matplotlib.rc_context({"text.parse_math": False})


def _per_class_chart(view) -> str:
    """Two panels: accuracy per class (value labels, forgotten classes shaded) and the change
    per class on its own scale, so a retained 0.93 → 0.95 is visible."""
    plt = _pyplot()
    rows = view.classes
    n = len(rows)
    series = [("original", [r.original for r in rows], ORIGINAL_COLOUR),
              ("unlearned", [r.unlearned for r in rows], UNLEARNED_COLOUR)]
    if rows and rows[0].reference is not None:
        series.append(("retrained reference", [r.reference for r in rows], REFERENCE_COLOUR))
    labels = [r.label for r in rows]
    long_labels = max(map(len, labels)) > 3 or n > 12
    width = 0.8 / len(series)
    fig, (ax, dx) = plt.subplots(2, 1, figsize=(max(6.5, n * 0.55 * len(series) / 2 + 1.5), 6.4),
                                 gridspec_kw={"height_ratios": [3, 2]}, sharex=True)
    x = np.arange(n)
    for i, r in enumerate(rows):
        if r.forgotten:
            for a in (ax, dx):
                a.axvspan(i - 0.45, i + 0.45, color=FORGOTTEN_COLOUR, alpha=0.08, lw=0)
    small = n <= 20  # value labels where they fit
    for k, (label, vals, colour) in enumerate(series):
        pos = x - 0.4 + width * (k + 0.5)
        v = np.nan_to_num(np.asarray(vals, float))
        bars = ax.bar(pos, v, width, label=label, color=colour)
        if small:
            ax.bar_label(bars, labels=[f"{a:.2f}" for a in v], fontsize=TEXT_PT, padding=1, rotation=90)
    ax.set_ylim(0, 1.32)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=TEXT_PT, ncol=len(series) + 1, loc="upper left", bbox_to_anchor=(0, 1.18), frameon=False)
    ax.tick_params(labelsize=TEXT_PT)
    ax.grid(axis="y", alpha=0.3)
    change = np.array([r.change for r in rows], float)
    retained = np.array([not r.forgotten for r in rows])
    span = np.nanmax(np.abs(change[retained])) if retained.any() else 0.0
    span = max(float(np.nan_to_num(span)) * 1.9, 0.01)  # room for the value labels inside the panel
    shown = np.where(retained, np.clip(np.nan_to_num(change), -span, span), 0.0)
    bars = dx.bar(x, shown, 0.6, color=CHANGE_COLOUR)
    if small:
        dx.bar_label(bars, labels=["" if r.forgotten else f"{c:+.3f}" for r, c in zip(rows, change, strict=True)],
                     fontsize=TEXT_PT, padding=1, rotation=90 if n > 12 else 0)
    for i, r in enumerate(rows):
        if r.forgotten:  # off this scale: its own drop, written out
            dx.annotate(f"forgotten\n{r.original:.2f}→{r.unlearned:.2f}", (i, -span * 0.95), ha="center",
                        va="bottom", fontsize=TEXT_PT, color=FORGOTTEN_COLOUR)
    dx.axhline(0, color="#444", lw=0.8)
    dx.set_ylim(-span, span)
    dx.set_ylabel("change (unlearned − original)")
    dx.grid(axis="y", alpha=0.3)
    dx.set_xticks(x)
    dx.set_xticklabels(labels, rotation=45 if long_labels else 0, ha="right" if long_labels else "center",
                       fontsize=TEXT_PT)
    dx.tick_params(labelsize=TEXT_PT)
    for tick, r in zip(dx.get_xticklabels(), rows, strict=True):
        if r.forgotten:
            tick.set_color(FORGOTTEN_COLOUR)
            tick.set_fontweight("bold")
    dx.set_xlabel("class (red, shaded: forgotten)")
    fig.tight_layout()
    out = _png(fig)
    plt.close(fig)
    return out


def _pca_projection(features: dict[str, tuple[np.ndarray, np.ndarray]], seed: int):
    """Every panel projected with one PCA, fitted on the first panel (the original): (the panels
    as (label, (n, 2) points, labels), the explained variance ratio), or None where no common
    projection exists."""
    from sklearn.decomposition import PCA

    if not features:
        return None
    dims = {f.shape[1] for f, _ in features.values()}
    if len(dims) != 1:
        return None  # a reference with another feature width: no common projection
    if not all(np.isfinite(f).all() for f, _ in features.values()):
        return None  # NaN or infinite features (the evidence says NaN): nothing to project
    rng = np.random.default_rng(seed)
    panels = list(features.items())
    feats0, y0 = panels[0][1]
    fit_idx = np.sort(rng.choice(len(y0), min(len(y0), PCA_MAX_POINTS), replace=False))
    pca = PCA(n_components=2, random_state=seed).fit(feats0[fit_idx].astype(np.float64))
    projected = []
    for label, (feats, y) in panels:
        idx = np.sort(rng.choice(len(y), min(len(y), PCA_MAX_POINTS), replace=False))
        projected.append((label, pca.transform(feats[idx].astype(np.float64)), y[idx]))
    return projected, pca.explained_variance_ratio_


def _pca_chart(projection, view, forget: list[int], narrow: bool = False) -> str:
    """The projected panels (``_pca_projection``): the forgotten classes each in its own colour,
    the retained ones in one grey; side by side, or (``narrow``, for a phone) one above the other."""
    plt = _pyplot()
    projected, ratio = projection
    allxy = np.concatenate([xy for _, xy, _ in projected])
    lo, hi = np.nanpercentile(allxy, 0.5, axis=0), np.nanpercentile(allxy, 99.5, axis=0)
    pad = (hi - lo) * 0.05
    n_classes = len(view.classes)
    order = sorted(forget)
    n = len(projected)
    fig, axes = plt.subplots(n if narrow else 1, 1 if narrow else n, figsize=(4.2, 3.9 * n) if narrow else (4.0 * n, 4.0),
                             squeeze=False)
    handles = {}
    for ax, (label, xy, y) in zip(axes.ravel(), projected, strict=True):
        retained = ~np.isin(y, order)
        if retained.any():
            h = ax.scatter(xy[retained, 0], xy[retained, 1], color=RETAINED_POINTS, s=5, alpha=0.5, lw=0,
                           label="retained classes")
            handles.setdefault(h.get_label(), h)
        for k, c in enumerate(order):
            sel = y == c
            if not sel.any() or c >= n_classes:
                continue
            h = ax.scatter(xy[sel, 0], xy[sel, 1], color=FORGOTTEN_COLOURS[k % len(FORGOTTEN_COLOURS)], marker="x",
                           s=18, lw=1.1, label=f"{view.classes[c].label} (forgotten)", zorder=3)
            handles.setdefault(h.get_label(), h)
        ax.set_title(label, fontsize=TEXT_PT + 1)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_xlabel("PC 1", fontsize=TEXT_PT)
        ax.set_ylabel("PC 2", fontsize=TEXT_PT)
        ax.tick_params(labelsize=TEXT_PT)
    title = f"one PCA fitted on the original's features (PC 1 {ratio[0]:.0%}, PC 2 {ratio[1]:.0%} of its variance)"
    fig.suptitle(title.replace(" (", "\n(") if narrow else title, fontsize=TEXT_PT + 1)
    per_row = 2 if narrow else 6
    legend = fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), per_row),
                        fontsize=TEXT_PT, markerscale=2, frameon=False, bbox_to_anchor=(0.5, -0.02))
    for h in legend.legend_handles:
        h.set_alpha(1)
    rows = (len(handles) - 1) // per_row + 1
    fig.tight_layout(rect=(0, (0.05 * rows) / (n if narrow else 1), 1, 1))
    out = _png(fig)
    plt.close(fig)
    return out


def _environment():
    from importlib.resources import files

    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt
    env.filters["gate"] = format_gate_value  # the one gate formatter (terminal, report.md, here)
    env.filters["interval"] = fmt_interval
    text = files("nhle_pipeline.pipeline").joinpath(TEMPLATE).read_text(encoding="utf-8")
    return env.from_string(text)


def render_html(m: Manifest, features: dict[str, tuple[np.ndarray, np.ndarray]], created: str | None = None) -> str:
    """The report page for manifest ``m``; ``features``: label -> (test features, labels);
    ``created``: the time to show (default: now, UTC)."""
    view = build_view(m, created)
    ev = m.metrics.evidence.model_dump()
    cols = [k for k in ("original", "unlearned", "reference") if ev.get(k)]
    gap = ev.get("gap_to_reference")
    evidence = [{"label": label, "values": [ev[c].get(key) for c in cols], "gap": gap.get(key) if gap else None}
                for key, label in EVIDENCE_ROWS]
    base = ev["original"].get("ratio_d")
    evidence.insert(1, {"label": "Ratio_D / the original's (what ratio_d_relative gates)", "gap": None,
                        "values": [ev[c]["ratio_d"] / base if base and ev[c].get("ratio_d") is not None else None
                                   for c in cols]})
    nh = m.metrics.nhle
    with _literal_text():
        per_class = _per_class_chart(view)
        projection = _pca_projection(features, m.seed)  # one projection, two layouts
        pca = _pca_chart(projection, view, m.forget_classes) if projection else None
        pca_narrow = _pca_chart(projection, view, m.forget_classes, narrow=True) if projection else None
    # a phone gets the per-class table below the chart instead of it, and the PCA panels stacked
    images = [{"id": "per-class-chart", "title": "Per-class test accuracy, and its change (unlearned − original)",
               "src": per_class, "narrow": None}]
    if pca:
        rep = m.metrics.representation
        seen = ("" if rep is None else f"; a forgotten class that stays a separate cluster is still in the features: "
                f"level {rep.level}, fresh-probe recovery {rep.unlearned.lpr_f:.0%}")
        images.append({"id": "pca-chart", "title": "Penultimate features of the test split, PCA "
                       f"(× = forgotten classes, grey = the retained ones; one projection for every panel{seen})",
                       "src": pca, "narrow": pca_narrow})
    forgotten_names = [r.label for r in view.classes if r.forgotten]
    return _environment().render(
        m=m, view=view, released=m.status == "released", evidence_cols=cols, evidence=evidence, has_gap=bool(gap),
        forgetting=forgetting_statement(m.metrics.representation), failed_gates=failed_gates_line(m),
        level=m.metrics.representation.level if m.metrics.representation is not None else "none",
        unlearning=f"NHLE {nh.steps} steps (stopped: {nh.stopped}); {nhle_settings_line(nh)}; CWM {m.cwm_mode}",
        images=images, definitions=definitions_for(m), forgotten_names=forgotten_names,
        versions=", ".join(f"{k} {v}" for k, v in m.runtime.versions.items()),
        model_text=model_text(m), total_s=total_seconds(m.timings_s), text_px=TEXT_PT * DPI / 72,
        timings=[(k, timing_text(k, v)) for k, v in m.timings_s.items()],
    )


def write_html_report(path: Path, manifest: Manifest, features: dict[str, tuple[np.ndarray, np.ndarray]],
                      created: str | None = None) -> None:
    path.write_text(render_html(manifest, features, created), encoding="utf-8")
