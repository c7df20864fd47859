"""The runner: chains the stages, times them, reports progress, owns the staging folder.

    load -> baseline -> NHLE -> CWM -> export -> verify -> release

Every stage is a plain function; this module only wires them. The verdict is
computed by onnxruntime on the exported file that ships. Nothing is written
before the load stage has validated every input; nothing reaches
``releases/`` unless every gate passed.
"""

from __future__ import annotations

import copy
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

import pipeline
from export.checker import check_onnx, head_rows, load_onnx, node_types
from export.metadata import stamp_metadata
from export.onnx_export import export_onnx
from pipeline.config import Config, release_name
from pipeline.cwm import apply_cwm
from pipeline.device import seed_everything
from pipeline.errors import GateFailure
from pipeline.inference import torch_logits
from pipeline.loading import load_inputs
from pipeline.models import find_head
from pipeline.nhle import nhle_finetune
from pipeline.release import (
    MANIFEST,
    SCRATCH,
    check_target,
    create_staging,
    file_digests,
    publish,
    write_json,
)
from verify.gates import evaluate_gates
from verify.metrics import accuracy, parity_max_abs
from verify.ort import open_session, ort_logits
from verify.report import write_report

STAGES = ("load", "baseline", "nhle", "cwm", "export", "verify", "release")
METHOD = "nhle-cwm"


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
    path: Path  # the release folder, or the kept staging folder
    released: bool


class _Timer:
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.timings: dict[str, float] = {}
        self.detail = ""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.listener.stage_start(name)
        self.detail = ""
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 3)
        self.listener.stage_end(name, self.timings[name], self.detail)


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torchvision

    return {
        "pipeline": pipeline.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def _cwm_visible(onnx_path: Path, head_name: str, classes: list[int], mode: str, suppress_bias: float) -> bool:
    """Are the forgotten rows masked in the exported head initializers?"""
    w, b = head_rows(load_onnx(onnx_path), head_name)
    rows_zero = bool(np.all(w[classes] == 0))
    if b is None:
        return rows_zero and mode == "zero"
    want = 0.0 if mode == "zero" else np.float32(suppress_bias)
    return rows_zero and bool(np.all(b[classes] == want))


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
        test = inp.data.test
        timer.detail = f"{inp.data.name}: {len(inp.data.train)} train / {len(test)} test, device {inp.device}"
    staging = create_staging(release_dir, name)  # first write of the run
    scratch = staging / SCRATCH
    ort_device = "cpu" if inp.device.type == "cpu" else "auto"

    with timer.stage("baseline"):
        original_onnx = scratch / "original.onnx"
        export_onnx(inp.model, inp.data.input_shape, original_onnx, opset=cfg.export.opset)
        sess, provider = open_session(original_onnx, ort_device)
        before = accuracy(ort_logits(sess, test.x, bs), test.y, forget, n_cls)
        timer.detail = f"original Acc_F {before.acc_f:.4f}, Acc_R {before.acc_r:.4f} ({provider})"

    with timer.stage("nhle"):
        model = copy.deepcopy(inp.model).to(inp.device)
        xf = torch.from_numpy(inp.data.train.x[inp.forget_idx]).to(inp.device)
        yf = torch.from_numpy(inp.data.train.y[inp.forget_idx]).to(inp.device)
        nh = nhle_finetune(
            model, xf, yf, n_cls, cfg.unlearn.nhle,
            on_step=lambda s, t, loss, acc: listener.step("nhle", s, t, f"loss {loss:.3f}, forget acc {acc:.2f}"),
        )
        timer.detail = f"{nh.steps} steps on {len(yf)} samples, stopped: {nh.stopped}"

    with timer.stage("cwm"):
        _, head = find_head(model, n_cls, inp.head_name)
        apply_cwm(head, forget, cfg.unlearn.cwm.mode, cfg.unlearn.cwm.suppress_bias)
        timer.detail = f"mode {cfg.unlearn.cwm.mode} on '{inp.head_name}' rows {forget}"

    with timer.stage("export"):
        model_onnx = staging / "model.onnx"
        external = export_onnx(model, inp.data.input_shape, model_onnx, opset=cfg.export.opset)
        stamp_metadata(model_onnx, {
            "method": METHOD,
            "forget_classes": ",".join(map(str, forget)),
            "num_classes": str(n_cls),
            "source_model_sha256": inp.weights_sha256 or "",
            "config_sha256": cfg.sha256(),
            "cwm_mode": cfg.unlearn.cwm.mode,
            "nhle_variant": cfg.unlearn.nhle.variant,
            "pipeline_version": pipeline.__version__,
        })
        check_onnx(model_onnx)
        timer.detail = f"opset {cfg.export.opset}, {model_onnx.stat().st_size / 1024:.0f} KiB"

    with timer.stage("verify"):
        sess, provider = open_session(model_onnx, ort_device)
        after_logits = ort_logits(sess, test.x, bs)
        after = accuracy(after_logits, test.y, forget, n_cls)
        ref_logits = torch_logits(model.to("cpu"), test.x, bs, torch.device("cpu"))
        metrics = {
            "original": before.to_dict(),
            "unlearned": after.to_dict(),
            "acc_f": after.acc_f,
            "delta_acc_r": after.acc_r - before.acc_r,
            "parity_max_abs": parity_max_abs(after_logits, ref_logits),
            "graph_unchanged": node_types(load_onnx(original_onnx)) == node_types(load_onnx(model_onnx)),
            "nhle": {
                "steps": nh.steps, "stopped": nh.stopped,
                "forget_acc_start": nh.forget_acc_start, "forget_acc_end": nh.forget_acc_end,
                "n_samples": int(len(yf)),
            },
        }
        if cfg.unlearn.cwm.mode != "none":
            metrics["cwm_in_graph"] = _cwm_visible(
                model_onnx, inp.head_name, forget, cfg.unlearn.cwm.mode, cfg.unlearn.cwm.suppress_bias
            )
        gates = evaluate_gates(metrics, cfg.verify.gates)
        if cfg.unlearn.cwm.mode == "none":
            gates = [g for g in gates if g.name != "cwm_in_graph"]
        passed = all(g.passed for g in gates)
        timer.detail = f"Acc_F {after.acc_f:.4f}, ΔAcc_R {metrics['delta_acc_r']:+.4f}, gates {'pass' if passed else 'FAIL'}"

    manifest = {
        "format": 1,
        "name": name,
        "status": "released" if passed else "gate_failed",
        "method": METHOD,
        "forget_classes": forget,
        "num_classes": n_cls,
        "seed": cfg.seed,
        "config": cfg.model_dump(mode="json"),
        "config_sha256": cfg.sha256(),
        "source_model": {"path": str(cfg.model.weights), "arch": cfg.model.arch, "sha256": inp.weights_sha256},
        "head": inp.head_name,
        "metrics": metrics,
        "gates": [g.to_dict() for g in gates],
        "passed": passed,
        "runtime": {
            "torch_device": str(inp.device),
            "onnxruntime_provider": provider,
            "versions": library_versions(),
            "platform": platform.platform(),
        },
        "external_data": external,
        "timings_s": dict(timer.timings),
    }
    if not passed:
        failed = [g.name for g in gates if not g.passed]
        write_report(staging / "report.md", manifest)
        manifest["files"] = file_digests(staging)
        write_json(staging / MANIFEST, manifest)
        raise GateFailure(f"gate(s) failed: {', '.join(failed)}; nothing released", str(staging))

    with timer.stage("release"):
        # The files record every stage up to verify; the release step's own
        # time is known only after the rename, so it is returned, not stored.
        write_report(staging / "report.md", manifest)
        manifest["files"] = file_digests(staging)
        write_json(staging / MANIFEST, manifest)
        path = publish(staging, target, force)
        timer.detail = str(path)
    manifest["timings_s"] = dict(timer.timings)
    return RunResult(manifest, path, True)
