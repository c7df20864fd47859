"""``report.md``: the human-readable verdict, rendered from the manifest alone."""

from __future__ import annotations

import re
from pathlib import Path

from nhle_pipeline.pipeline.config import NHLE_PRESET_KEYS
from nhle_pipeline.pipeline.release.manifest import Manifest, NHLERecord
from nhle_pipeline.pipeline.release.report_view import (
    build_view,
    definitions_for,
    failed_gates_line,
    fmt_interval,
    forgetting_statement,
    model_text,
    timing_text,
)
from nhle_pipeline.verify.formatting import format_gate_value, format_value


def _f(v, digits: int = 4) -> str:
    return format_value(v, f".{digits}f")


_MARKDOWN = re.compile(r"([\\`*_\[\]<>|$~&])")


def _md(text: str) -> str:
    """A name from a config or a data set as literal Markdown text: no markup, math (``$``) or
    table cell breaks (``|``) of its own."""
    return _MARKDOWN.sub(r"\\\1", text)


def nhle_settings_line(nh: NHLERecord) -> str:
    """One line of the resolved NHLE settings ("not recorded" in older manifests)."""
    st = nh.settings
    if not st:
        return "not recorded"
    keys = ("variant", *NHLE_PRESET_KEYS)
    line = ", ".join(f"{k} {'unset' if st.get(k) is None else st.get(k)}" for k in keys)
    n_retained = nh.n_retained_samples
    data = f"forget samples + {n_retained} retained samples" if n_retained else "forget samples only"
    return f"{line}; data: {data}"


def _cwm_bias(m: Manifest) -> str:
    cwm = m.metrics.cwm
    if cwm is None or cwm.bias is None:
        return ""
    cal = cwm.calibration
    how = (f" ({_f(cal.margin, 2)} below the lowest retained logit {_f(cal.lowest_retained_logit, 2)} "
           f"on {cal.samples} training images)") if cal else ""
    return f", forgotten rows' bias {cwm.bias:.6g}{how}"


def _derived_lines(m: Manifest) -> list[str]:
    """A derived release (pipeline quantize): its precision and the fp32 parent it was made from."""
    d = getattr(m, "derived", None)
    if d is None:
        return []
    how = ", ".join(f"{k} {v}" for k, v in d.settings.items())
    calib = f"; calibration: {d.calibration_samples} training images, seed {d.calibration_seed}" if d.calibration_samples else ""
    return [
        f"- derived release: {d.precision} of '{d.parent.name}' (parent manifest_sha256 `{d.parent.manifest_sha256}`, "
        f"model sha256 `{d.parent.model_sha256}`); {how}{calib}",
        f"- top-1 agreement with the fp32 parent: {_f(d.agreement)} on {d.agreement_samples} test images (gate ≥ "
        f"{d.agreement_min}), max |Δlogit| {_f(d.max_abs_logit_diff, 6)}, Acc_R vs the parent {_f(d.acc_r_vs_parent)}; "
        "'original' below is the fp32 original, NHLE, CWM and parity are the parent's",
    ]


def render_report(m: Manifest, created: str | None = None) -> str:
    """Markdown report of a run or release manifest (``created``: its time; default now, UTC)."""
    met = m.metrics
    view = build_view(m, created)
    orig, unl = met.original, met.unlearned
    verdict = "RELEASED" if m.status == "released" else f"NOT RELEASED: {failed_gates_line(m)}"
    lines = [
        f"# Unlearning report: {m.name}",
        "",
        f"**Verdict: {verdict}**",
        "",
        f"**{forgetting_statement(met.representation)}**",
        "",
        f"- method: {m.method}, forgotten classes: {m.forget_classes}",
        f"- source model: `{m.source_model.path}` ({m.source_model.arch}), sha256 `{m.source_model.sha256}`",
        f"- model: {model_text(m)}",
        f"- model.onnx sha256 `{view.model_sha256 or 'not recorded'}`"
        + (f" ({view.model_bytes:,} bytes)" if view.model_bytes is not None else ""),
        f"- config sha256 `{m.config_sha256}`, seed {m.seed}",
        f"- created {view.created}",
        f"- PyTorch device: {m.runtime.torch_device}, onnxruntime provider: {m.runtime.onnxruntime_provider}",
        *_derived_lines(m),
        "",
        "## Gates",
        "",
        "| gate | value | threshold | result |",
        "| --- | --- | --- | --- |",
    ]
    for g in m.gates:  # the one gate formatter (4 significant digits), failures in bold
        name, result = (g.name, "✓ pass") if g.passed else (f"**{g.name}**", "**✗ FAIL**")
        lines.append(f"| {name} | {format_gate_value(g.value)} | {g.op} {format_gate_value(g.threshold)} | {result} |")
    lines += [
        "",
        "## Accuracy (onnxruntime, test split)",
        "",
        "| metric | n | original | 95 % interval | unlearned | 95 % interval | change |",
        "| --- | ---: | ---: | --- | ---: | --- | ---: |",
        f"| Acc_F | {orig.n_forget} | {_f(orig.acc_f)} | {fmt_interval(view.accuracy['original']['acc_f'])} "
        f"| {_f(unl.acc_f)} | {fmt_interval(view.accuracy['unlearned']['acc_f'])} | {_f(unl.acc_f - orig.acc_f)} |",
        f"| Acc_R | {orig.n_retain} | {_f(orig.acc_r)} | {fmt_interval(view.accuracy['original']['acc_r'])} "
        f"| {_f(unl.acc_r)} | {fmt_interval(view.accuracy['unlearned']['acc_r'])} | {_f(met.delta_acc_r)} |",
        "",
        f"ΔAcc_R {_f(met.delta_acc_r)}, 95 % interval {fmt_interval(view.delta_acc_r, signed=True)} "
        "(n: test images; intervals: Wilson, and Newcombe's for the difference).",
        "",
        "| class | original | unlearned | change |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in view.classes:
        tag = " (forgotten)" if row.forgotten else ""
        lines.append(f"| {_md(row.label)}{tag} | {_f(row.original)} | {_f(row.unlearned)} | {_f(row.change)} |")
    ev = met.evidence.model_dump()
    cols = [k for k in ("original", "unlearned", "reference") if ev.get(k)]
    if cols:
        gap = ev.get("gap_to_reference")
        lines += [
            "",
            "## Evidence of forgetting beyond accuracy (penultimate features, onnxruntime)",
            "",
            "| metric | " + " | ".join(cols) + (" | gap to reference |" if gap else " |"),
            "| --- | " + " | ".join("---" for _ in cols) + (" | --- |" if gap else " |"),
        ]
        for key in ("ratio_d", "d_inter", "d_intra", "probe_auc", "mia_efficacy"):
            row = [_f(ev[c].get(key)) for c in cols] + ([_f(gap.get(key))] if gap else [])
            lines.append(f"| {key} | " + " | ".join(row) + " |")
        rel = [ev[c]["ratio_d"] / ev["original"]["ratio_d"] if ev[c].get("ratio_d") is not None
               and ev["original"].get("ratio_d") else None for c in cols]
        lines.append("| ratio_d / the original's (what ratio_d_relative gates) | "
                     + " | ".join(_f(v) for v in rel) + (" | |" if gap else " |"))
        if gap:
            lines.append(f"\nMean absolute gap to the retrained reference: {_f(gap.get('mean'))}")
    rep = met.representation
    if rep is not None:
        audits = [("original", rep.original), ("unlearned", rep.unlearned)] + (
            [("reference", rep.reference)] if rep.reference is not None else [])
        lines += [
            "",
            f"## Representation audit ({_md(rep.layer)}): level {rep.level}",
            "",
            "| diagnostic | " + " | ".join(n for n, _ in audits) + (" | gap closed |" if rep.gap_closed else " |"),
            "| --- | " + " | ".join("---:" for _ in audits) + (" | ---: |" if rep.gap_closed else " |"),
        ]
        for key, label in (("lpr_f", "LPR_F: fresh probe, forgotten classes"), ("lpr_r", "LPR_R: fresh probe, retained"),
                           ("cka_original", "CKA to the original")):
            closed = [_f((rep.gap_closed or {}).get(key))] if rep.gap_closed else []
            lines.append(f"| {label} | " + " | ".join(_f(getattr(a, key)) for _, a in audits) + " | "
                         + " | ".join(closed) + (" |" if closed else ""))
        for layer in rep.layers:  # the layer-wise audit: the class in an earlier layer
            at = [layer.original, layer.unlearned] + ([layer.reference] if rep.reference is not None else [])
            for key, label in (("lpr_f", "LPR_F"), ("cka_original", "CKA to the original")):
                closed = [_f((layer.gap_closed or {}).get(key))] if rep.gap_closed else []
                lines.append(f"| {label} at {_md(layer.layer)} | " + " | ".join(_f(getattr(a, key) if a else None)
                                                                          for a in at) + " | "
                             + " | ".join(closed) + (" |" if closed else ""))
    if view.relearn:
        lines += [
            "",
            "## Relearning (verify.evidence.relearn)",
            "",
            "| figure | original | unlearned |",
            "| --- | ---: | ---: |",
        ]
        lines += [f"| {label} | {_f(o)} | {_f(u)} |" for label, o, u in view.relearn]
        lines.append(f"\nSteps to relearn, unlearned ÷ original: {_f(view.relearn_steps_relative)}")
    nh = met.nhle
    lines += [
        "",
        "## Unlearning",
        "",
        f"- NHLE: {nh.steps} steps, stopped: {nh.stopped}; forget-sample accuracy {_f(nh.forget_acc_start)} → {_f(nh.forget_acc_end)}",
        f"- NHLE settings: {nhle_settings_line(nh)}",
        f"- CWM mode: {m.cwm_mode}" + _cwm_bias(m),
        f"- ONNX vs PyTorch max |Δlogit|: {_f(met.parity_max_abs, 6)}",
        "",
        "## Stage timings (s)",
        "",
        "| stage | seconds |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {timing_text(k, v)} |" for k, v in m.timings_s.items()]
    lines += ["", "Writing these reports and the digests is the release stage, timed in `manifest.json` "
              "(`timings_s.release`; `report` for a run that failed its gates)."]
    lines += ["", "## Files", "", "| file | sha256 | bytes |", "| --- | --- | --- |"]
    lines += [f"| {k} | `{v.sha256}` | {v.bytes:,} |" for k, v in m.files.items()]
    lines += ["", "The reports' and the manifest's own digests are in `manifest.json` (a file cannot list itself)."]
    lines += ["", "## Definitions", ""] + [f"- **{name}**: {text}" for name, text in definitions_for(m)]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in m.runtime.versions.items()), ""]
    return "\n".join(lines)


def write_report(path: Path, manifest: Manifest, created: str | None = None) -> None:
    path.write_text(render_report(manifest, created), encoding="utf-8")
