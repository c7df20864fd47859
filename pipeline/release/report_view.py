"""What both reports show, computed once from the manifest: the model's digest, sample counts
and 95 % intervals, per-class rows with class names, and the metric definitions.

``report_md`` and ``report_html`` render these values; neither recomputes a number.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from nhle_pipeline.pipeline.release.files import MODEL
from nhle_pipeline.pipeline.release.manifest import Manifest
from nhle_pipeline.verify.definitions import DEFINITIONS, REPRESENTATION_TERMS
from nhle_pipeline.verify.intervals import accuracy_interval, difference_interval


@dataclass
class Interval:
    value: float
    low: float
    high: float
    n: int | None = None  # samples (None for a difference)

    def finite(self) -> bool:
        return all(math.isfinite(x) for x in (self.value, self.low, self.high))


@dataclass
class ClassRow:
    id: int
    name: str | None
    original: float
    unlearned: float
    reference: float | None
    forgotten: bool

    @property
    def change(self) -> float:
        return self.unlearned - self.original

    @property
    def label(self) -> str:
        return f"{self.id} {self.name}" if self.name and self.name != str(self.id) else str(self.id)


@dataclass
class ReportView:
    created: str
    model_sha256: str | None
    model_bytes: int | None
    class_names: list[str] | None
    accuracy: dict[str, dict[str, Interval]]  # "original"/"unlearned" -> "acc_f"/"acc_r"
    delta_acc_r: Interval
    classes: list[ClassRow]
    files: list[tuple[str, str, int]] = field(default_factory=list)  # (path, sha256, bytes)
    relearn: list[tuple[str, Any, Any]] = field(default_factory=list)  # (figure, original, unlearned)
    relearn_steps_relative: float | None = None  # the relearn gate's value (None: not measured)


def relearn_rows(block) -> list[tuple[str, Any, Any]]:
    """The relearning figures of both models (``metrics.evidence.relearn``) as report rows."""
    o, u = block.original, block.unlearned

    def label(key: str) -> str:
        if key.startswith("relearn_steps_k"):
            return f"steps to Acc_F ≥ 0.5, k = {key.removeprefix('relearn_steps_k')} (none: not within the budget)"
        if key.startswith("relearn_auc_k"):
            return f"relearn AUC, k = {key.removeprefix('relearn_auc_k')}"
        return {"relearn_auc": "relearn AUC, mean over k", "passive_acc_f": "Acc_F after fine-tuning on retained data only"}.get(key, key)

    return [(label(k), o.get(k), u.get(k)) for k in u if k != "curves"]


def created_at() -> str:
    """Now in UTC (ISO 8601, seconds), or ``$SOURCE_DATE_EPOCH`` when set (reproducible builds)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    when = (datetime.fromtimestamp(int(epoch), timezone.utc) if epoch.isdigit()
            else datetime.now(timezone.utc))
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def class_names_of(m: Manifest) -> list[str] | None:
    """The manifest's class names when it records them (field added in 0.4), else None."""
    names = getattr(m, "class_names", None)
    return list(names) if names and len(names) == m.num_classes else None


def build_view(m: Manifest, created: str | None = None) -> ReportView:
    met = m.metrics
    acc = {}
    for label, rec in (("original", met.original), ("unlearned", met.unlearned), ("reference", met.reference)):
        if rec is not None:
            acc[label] = {"acc_f": Interval(rec.acc_f, *accuracy_interval(rec.acc_f, rec.n_forget), rec.n_forget),
                          "acc_r": Interval(rec.acc_r, *accuracy_interval(rec.acc_r, rec.n_retain), rec.n_retain)}
    o, u = met.original, met.unlearned
    delta = Interval(met.delta_acc_r, *difference_interval(u.acc_r, u.n_retain, o.acc_r, o.n_retain))
    names = class_names_of(m)
    ref = met.reference.per_class if met.reference else None
    classes = [
        ClassRow(c, names[c] if names else None, a, b, ref[c] if ref else None, c in m.forget_classes)
        for c, (a, b) in enumerate(zip(o.per_class, u.per_class, strict=True))
    ]
    model = m.files.get(MODEL)
    files = [(k, v.sha256, v.bytes) for k, v in m.files.items()]
    block = met.evidence.relearn
    return ReportView(created or created_at(), model.sha256 if model else None, model.bytes if model else None,
                      names, acc, delta, classes, files, relearn_rows(block) if block else [],
                      block.steps_relative if block else None)


def model_text(m: Manifest) -> str:
    """The model as the run read it: its head(s), where its logits came from, a key prefix removed."""
    heads = m.heads or [m.head]
    parts = [f"head{'s' if len(heads) > 1 else ''} {', '.join(heads)} (masked by CWM)"]
    src = m.source_model
    if src.logits_from:
        parts.append(f"logits from its {src.logits_from}")
    if src.key_prefix:
        parts.append(f"checkpoint key prefix '{src.key_prefix}' removed")
    return "; ".join(parts)


def fmt(v: Any, spec: str = ".4f") -> str:
    """A number for people: NaN and None as 'n/a'."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(v, spec)


def fmt_interval(iv: Interval, spec: str = ".3f", signed: bool = False) -> str:
    if not iv.finite():
        return "n/a"
    s = "+" + spec if signed else spec
    return f"[{format(iv.low, s)}, {format(iv.high, s)}]"


def total_seconds(timings: dict[str, float]) -> float:
    """The stages' total: a dotted key (``nhle.per_step``) is a detail of its stage, not a stage."""
    return sum(v for k, v in timings.items() if "." not in k)


def timing_text(name: str, seconds: float) -> str:
    """A stage's seconds to 2 decimals, a detail's (``nhle.per_step``) to 3 significant digits."""
    return f"{seconds:.3g}" if "." in name else f"{seconds:.2f}"


def forgetting_statement(rep) -> str:
    """What the release forgot, in one plain sentence (the level of verify/representation.py);
    the run summary, both reports and verify say it in these words."""
    if rep is None:
        return "forgetting level: not audited (a manifest written before the representation audit)"
    u = rep.unlearned
    if rep.level == "representation":
        return (f"forgetting level: representation — a fresh linear probe on the features recovers {u.lpr_f:.0%} "
                "of the forgotten test images, and it and Ratio_D are within a quarter of the gap of the "
                "retrained reference's")
    if rep.level == "output":
        why = ("there is no retrained reference to compare with (verify.reference: retrain)" if rep.reference is None
               else _short_of_representation(rep))
        return (f"forgetting level: output — the file never outputs the forgotten classes, but a fresh linear "
                f"probe on its features recovers {u.lpr_f:.0%} of their test images; {why}")
    return "forgetting level: none — the output is not masked"


def failed_gates_line(m) -> str:
    """The gates that failed, named: what a NOT RELEASED headline says."""
    failed = [g.name for g in m.gates if not g.passed]
    return f"gate(s) failed: {', '.join(failed)}" if failed else "no gate failed"


def _short_of_representation(rep) -> str:
    """Which part of the representation rule (verify/representation.py) a release missed."""
    from nhle_pipeline.verify.representation import GAP_CLOSED_MIN

    closed = rep.gap_closed or {}
    parts = [f"{label} closed {closed.get(key, float('nan')):.0%}" for key, label in
             (("lpr_f", "LPR_F"), ("ratio_d", "Ratio_D"))]
    for layer in rep.layers:  # the layer-wise audit: where the gap is nil, within one image is needed
        gap = (layer.gap_closed or {}).get("lpr_f", float("nan"))
        parts.append(f"LPR_F at {layer.layer} " + (f"closed {gap:.0%}" if math.isfinite(gap) else
                                                   f"{layer.unlearned.lpr_f:.0%} where both are "
                                                   f"{layer.reference.lpr_f if layer.reference else float('nan'):.0%}"))
    toward = rep.unlearned.cka_reference is not None and rep.original.cka_reference is not None and \
        rep.unlearned.cka_reference > rep.original.cka_reference
    return (f"short of the representation level: of the gap to the retrained reference {', '.join(parts)} "
            f"({GAP_CLOSED_MIN:.0%} each, or within noise, needed); CKA to the reference "
            f"{'rose' if toward else 'did not rise'}")


def definitions_for(m) -> list[tuple[str, str]]:
    """The definitions of what this report shows (verify/definitions.py): relearning only where it
    ran, the representation audit's where it ran."""
    relearned = m.metrics.evidence.relearn is not None
    audited = m.metrics.representation is not None
    return [(n, t) for n, t in DEFINITIONS
            if (n != "relearning" or relearned) and (n not in REPRESENTATION_TERMS or audited)]

