"""Terminal rendering for the CLI (rich): stage progress and the run summary.

Only the CLI imports this module; library code reports through the runner's
Listener protocol and never prints.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from nhle_pipeline.pipeline.release.manifest import Manifest
from nhle_pipeline.verify.formatting import format_gate_value, format_value

console = Console(highlight=False, soft_wrap=True)


class RichListener:
    """Prints one line per finished stage; a live status line while a stage runs."""

    def __init__(self) -> None:
        self._status = None

    def stage_start(self, stage: str) -> None:
        self.close()
        self._status = console.status(f"{stage} ...")
        self._status.start()

    def step(self, stage: str, done: int, total: int, info: str) -> None:
        if self._status is not None:
            self._status.update(f"{stage} {done}/{total}: {info}")

    def stage_end(self, stage: str, seconds: float, detail: str) -> None:
        self.close()
        console.print(f"[green]✓[/] {stage:<9s}{seconds:7.2f}s  {detail}")

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def print_run_summary(m: Manifest, release: Path | None) -> None:
    """The table a user reads at the end of `pipeline run`."""
    met = m.metrics
    o, u, r = met.original, met.unlearned, met.reference
    t = Table(title=f"{m.name}: forget {m.forget_classes}", show_lines=False)
    for col in ("metric", "original", "unlearned") + (("retrained",) if r else ()):
        t.add_column(col, justify="left" if col == "metric" else "right")
    rows = [("Acc_F", o.acc_f, u.acc_f, r and r.acc_f), ("Acc_R", o.acc_r, u.acc_r, r and r.acc_r)]
    ev = met.evidence
    for key, label in (("ratio_d", "Ratio_D"), ("probe_auc", "probe AUC"), ("mia_efficacy", "MIA-efficacy")):
        rows.append((label, getattr(ev.original, key), getattr(ev.unlearned, key),
                     getattr(ev.reference, key) if ev.reference else None))
    for label, a, b, c in rows:
        t.add_row(label, f"{a:.4f}", f"{b:.4f}", *([format_value(c)] if r else []))
    t.add_row("ΔAcc_R", "", f"{met.delta_acc_r:+.4f}", *([f"{r.acc_r - o.acc_r:+.4f}"] if r else []))
    rep = met.representation
    if rep is not None:
        ref = rep.reference
        t.add_row("LPR_F (fresh probe)", f"{rep.original.lpr_f:.4f}", f"{rep.unlearned.lpr_f:.4f}",
                  *([f"{ref.lpr_f:.4f}"] if r else []))
        t.add_row("CKA to original", f"{rep.original.cka_original:.4f}", f"{rep.unlearned.cka_original:.4f}",
                  *([format_value(ref.cka_original if ref else None)] if r else []))
        for layer in rep.layers:
            t.add_row(f"LPR_F at {layer.layer}", f"{layer.original.lpr_f:.4f}", f"{layer.unlearned.lpr_f:.4f}",
                      *([format_value(layer.reference.lpr_f if layer.reference else None)] if r else []))
    console.print(t)
    if rep is not None:
        console.print(forgetting_line(rep))
    g = Table(title="gates")
    g.add_column("")
    g.add_column("gate")
    g.add_column("value", justify="right")
    g.add_column("threshold")
    for gate in m.gates:
        mark = "[green]✓[/]" if gate.passed else "[red]✗[/]"
        g.add_row(mark, gate.name, format_gate_value(gate.value), f"{gate.op} {format_gate_value(gate.threshold)}")
    console.print(g)
    from nhle_pipeline.pipeline.release.report_view import timing_text, total_seconds

    timings = ", ".join(f"{k} {timing_text(k, v)}s" for k, v in m.timings_s.items())
    console.print(f"stages: {timings}  (total {total_seconds(m.timings_s):.2f}s)")
    console.print(f"torch device {m.runtime.torch_device}, onnxruntime {m.runtime.onnxruntime_provider}")
    if release is not None:
        console.print(f"[bold green]released[/] {release}")
    else:
        from nhle_pipeline.pipeline.release.report_view import failed_gates_line

        console.print(f"[bold red]not released[/]: {failed_gates_line(m)}")


def forgetting_line(rep) -> str:
    """The level sentence (report_view.forgetting_statement), coloured by level."""
    from nhle_pipeline.pipeline.release.report_view import forgetting_statement

    colour = {"representation": "green", "output": "yellow"}.get(rep.level, "red")
    return f"[bold {colour}]{forgetting_statement(rep)}[/]"


def train_original(cfg, *, device: str | None, force: bool) -> Path:
    """Run `pipeline train` with an epoch progress line."""
    import time

    from nhle_pipeline.pipeline.train import train_original as _train

    start = time.perf_counter()

    def epoch_line(e: int, n: int, loss: float) -> None:  # one line per epoch: a log file shows progress too
        console.print(f"train epoch {e}/{n}: loss {loss:.4f} ({time.perf_counter() - start:.0f} s)")

    def resume_line(e: int, b: int) -> None:
        console.print(f"train: resuming from the saved state ({cfg.model.weights}.train-state.pt) "
                      f"at epoch {e}/{cfg.train.epochs}, batch {b}")

    with console.status("train ..."):
        path, acc = _train(cfg, device=device, force=force, on_epoch=epoch_line, on_resume=resume_line)
    console.print(f"[green]✓[/] trained {cfg.model.arch} on {cfg.data.dataset}: test accuracy {acc:.4f}")
    from nhle_pipeline.pipeline.output import current_document

    if current_document() is not None:  # pipeline train --json
        current_document().update(test_accuracy=float(acc))
    return path
