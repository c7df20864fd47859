"""The runner: chains the stages, times them, reports progress, owns the staging folder.

    load -> baseline -> NHLE -> CWM -> export -> [reference] -> verify -> release

Every stage is a plain function; this module only wires them. The verdict is
computed by onnxruntime on the exported file that ships. Nothing is written
before the load stage has validated every input; nothing reaches
``releases/`` unless every gate passed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from nhle_pipeline.export.metadata import stamp_metadata
from nhle_pipeline.export.onnx_export import export_onnx
from nhle_pipeline.export.onnx_file import check_onnx, head_rows, load_onnx, node_types
from nhle_pipeline.pipeline.config import Config, release_name
from nhle_pipeline.pipeline.cwm import apply_cwm
from nhle_pipeline.pipeline.device import seed_everything
from nhle_pipeline.pipeline.errors import GateFailure
from nhle_pipeline.pipeline.inference import torch_logits
from nhle_pipeline.pipeline.loading import load_inputs
from nhle_pipeline.pipeline.models import find_head
from nhle_pipeline.pipeline.nhle import nhle_finetune
from nhle_pipeline.pipeline.reference import retrain_reference
from nhle_pipeline.pipeline.release.manifest import (
    MANIFEST,
    SCRATCH,
    build_manifest,
    file_digests,
    onnx_provenance,
    write_json,
)
from nhle_pipeline.pipeline.release.report_html import write_html_report
from nhle_pipeline.pipeline.release.report_md import write_report
from nhle_pipeline.pipeline.release.staging import check_target, create_staging, publish
from nhle_pipeline.pipeline.release.triton import write_triton_repository
from nhle_pipeline.pipeline.testhooks import pause_at
from nhle_pipeline.verify.gates import evaluate_gates
from nhle_pipeline.verify.measure import measure_onnx
from nhle_pipeline.verify.verification import verification_metrics

STAGES = ("load", "baseline", "nhle", "cwm", "export", "reference", "verify", "release")


class Listener(Protocol):
    """Progress sink; the CLI renders it, library code never prints."""

    def stage_start(self, stage: str) -> None: ...
    def stage_end(self, stage: str, seconds: float, detail: str) -> None: ...
    def step(self, stage: str, done: int, total: int, info: str) -> None: ...


class NullListener:
    def stage_start(self, stage: str) -> None: ...
    def stage_end(self, stage: str, seconds: float, detail: str) -> None: ...
    def step(self, stage: str, done: int, total: int, info: str) -> None: ...


@dataclass
class RunResult:
    manifest: dict
    path: Path  # the release folder (a run that does not release raises instead)


class _Timer:
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.timings: dict[str, float] = {}
        self.detail = ""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.listener.stage_start(name)
        pause_at(name)  # inert unless a test sets PIPELINE_TEST_PAUSE_AT (pipeline/testhooks.py)
        self.detail = ""
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 3)
        self.listener.stage_end(name, self.timings[name], self.detail)


def _cwm_visible(onnx_path: Path, head_name: str, classes: list[int], mode: str, suppress_bias: float) -> bool:
    """Are the forgotten rows masked in the exported head initializers?"""
    w, b = head_rows(load_onnx(onnx_path), head_name)
    rows_zero = bool(np.all(w[classes] == 0))
    if b is None:
        return rows_zero and mode == "zero"
    want = 0.0 if mode == "zero" else np.float32(suppress_bias)
    return rows_zero and bool(np.all(b[classes] == want))


def _write_reports(staging: Path, manifest: dict, features: dict) -> None:
    """report.md, report.html, then manifest.json with the digests of everything else."""
    write_report(staging / "report.md", manifest)
    write_html_report(staging / "report.html", manifest, features)
    manifest["files"] = file_digests(staging)
    write_json(staging / MANIFEST, manifest)


def run_pipeline(
    cfg: Config,
    config_path: str | Path,
    *,
    out_dir: str | Path | None = None,
    device: str | None = None,
    force: bool = False,
    listener: Listener | None = None,
) -> RunResult:
    """Run every stage; return the released folder, or raise GateFailure (staging kept)."""
    listener = listener or NullListener()
    timer = _Timer(listener)
    release_dir = Path(out_dir or cfg.release.dir)
    name = release_name(cfg, config_path)
    forget = list(cfg.forget.classes)
    n_cls = cfg.model.num_classes
    bs = cfg.data.batch_size

    with timer.stage("load"):
        target = check_target(release_dir, name, force)
        seed_everything(cfg.seed)
        inp = load_inputs(cfg, device)
        data = inp.data
        timer.detail = f"{data.name}: {len(data.train)} train / {len(data.test)} test, device {inp.device}"
    staging = create_staging(release_dir, name)  # first write of the run
    scratch = staging / SCRATCH
    ort_device = "cpu" if inp.device.type == "cpu" else "auto"

    def measure(path: Path):
        return measure_onnx(path, inp.head_name, data.train, data.test, forget, n_cls, seed=cfg.seed, device=ort_device,
                            batch_size=bs, scratch=scratch)

    with timer.stage("baseline"):
        original_onnx = scratch / "original.onnx"
        export_onnx(inp.model, data.input_shape, original_onnx, opset=cfg.export.opset)
        before = measure(original_onnx)
        timer.detail = (f"original Acc_F {before.accuracy.acc_f:.4f}, Acc_R {before.accuracy.acc_r:.4f}, "
                        f"Ratio_D {before.evidence.ratio_d:.3f} ({before.provider})")

    with timer.stage("nhle"):
        model = copy.deepcopy(inp.model).to(inp.device)
        xf = torch.from_numpy(data.train.x[inp.forget_idx]).to(inp.device)
        yf = torch.from_numpy(data.train.y[inp.forget_idx]).to(inp.device)
        xr = torch.from_numpy(data.train.x[inp.retained_idx]).to(inp.device) if len(inp.retained_idx) else None
        nh = nhle_finetune(
            model, xf, yf, n_cls, cfg.unlearn.nhle, retained_x=xr,
            on_step=lambda s, t, loss, acc: listener.step("nhle", s, t, f"loss {loss:.3f}, forget acc {acc:.2f}"),
        )
        retained_note = f" + {len(inp.retained_idx)} retained samples" if len(inp.retained_idx) else ""
        timer.detail = f"{nh.steps} steps on {len(yf)} forget samples{retained_note}, stopped: {nh.stopped}"

    with timer.stage("cwm"):
        _, head = find_head(model, n_cls, inp.head_name)
        apply_cwm(head, forget, cfg.unlearn.cwm.mode, cfg.unlearn.cwm.suppress_bias)
        timer.detail = f"mode {cfg.unlearn.cwm.mode} on '{inp.head_name}' rows {forget}"

    with timer.stage("export"):
        model_onnx = staging / "model.onnx"
        external = export_onnx(model, data.input_shape, model_onnx, opset=cfg.export.opset)
        stamp_metadata(model_onnx, onnx_provenance(cfg, inp.weights_sha256))
        check_onnx(model_onnx)
        write_triton_repository(staging, name, model_onnx)  # triton/<name>/{config.pbtxt,1/model.onnx}
        timer.detail = f"opset {cfg.export.opset}, {model_onnx.stat().st_size / 1024:.0f} KiB"

    reference = None
    if cfg.verify.reference == "retrain":
        with timer.stage("reference"):
            ref_path = retrain_reference(
                cfg, data, inp.device, scratch / "reference.onnx",
                on_epoch=lambda e, n, loss: listener.step("reference", e, n, f"retrain loss {loss:.4f}"),
            )
            reference = measure(ref_path)
            timer.detail = (f"retrained without {forget}: Acc_R {reference.accuracy.acc_r:.4f}, "
                            f"Ratio_D {reference.evidence.ratio_d:.3f}")

    with timer.stage("verify"):
        after = measure(model_onnx)
        cwm_mode = cfg.unlearn.cwm.mode
        metrics = verification_metrics(
            before, after, reference,
            torch_logits=torch_logits(model.to("cpu"), data.test.x, bs, torch.device("cpu")),
            graph_unchanged=node_types(load_onnx(original_onnx)) == node_types(load_onnx(model_onnx)),
            cwm_in_graph=None if cwm_mode == "none" else _cwm_visible(
                model_onnx, inp.head_name, forget, cwm_mode, cfg.unlearn.cwm.suppress_bias),
            nhle={"steps": nh.steps, "stopped": nh.stopped, "forget_acc_start": nh.forget_acc_start,
                  "forget_acc_end": nh.forget_acc_end, "n_samples": int(len(yf)),
                  "n_retained_samples": int(len(inp.retained_idx)), "settings": nh.settings},
        )
        gates = evaluate_gates(metrics, cfg.verify.gates, cwm_applied=cwm_mode != "none")
        passed = all(g.passed for g in gates)
        timer.detail = (f"Acc_F {after.accuracy.acc_f:.4f}, ΔAcc_R {metrics['delta_acc_r']:+.4f}, "
                        f"Ratio_D {after.evidence.ratio_d:.3f}, gates {'pass' if passed else 'FAIL'}")

    features = {"original": (before.test_features, data.test.y), "unlearned": (after.test_features, data.test.y)}
    if reference is not None:
        features["retrained reference"] = (reference.test_features, data.test.y)
    manifest = build_manifest(
        cfg, name=name, passed=passed, weights_sha256=inp.weights_sha256, head_name=inp.head_name,
        metrics=metrics, gates=[g.to_dict() for g in gates], torch_device=str(inp.device),
        provider=after.provider, external_data=external, timings=timer.timings,
    )
    if not passed:
        _write_reports(staging, manifest, features)
        failed = [g.name for g in gates if not g.passed]
        raise GateFailure(f"gate(s) failed: {', '.join(failed)}; nothing released", str(staging))

    with timer.stage("release"):
        # The files record every stage up to verify; the release step's own
        # time is known only after the rename, so it is returned, not stored.
        _write_reports(staging, manifest, features)
        path = publish(staging, target, force)
        timer.detail = str(path)
    manifest["timings_s"] = dict(timer.timings)
    return RunResult(manifest, path)
