"""Released models in reduced precision: what `pipeline quantize` gives on each benchmark setting.

    python -m benchmarks.precision --data-root ../shared/datasets
    python -m benchmarks.precision --settings digits-mlp          # no data needed

For each setting (digits MLP, Fashion-MNIST LeNet, CIFAR-10 cnn; forget class
0): the original model (trained once per dataset, model, recipe and seed,
cached under benchmarks/cache/ by benchmarks/common.py), an fp32 release by
`pipeline run` (in-process, default config: calibrated CWM), then
`pipeline quantize` of it in each mode (int8-dynamic, int8-static, fp16, the
tools' defaults). Every number comes from the release's own manifest (Acc_F,
Acc_R, ΔAcc_R against the fp32 original, top-1 agreement with the fp32 release,
the gates' verdict), except the CPU latencies: onnxruntime, one intra-op
thread, batch 1 and 256 of test images, the four files timed side by side in
alternating rounds (benchmarks/inference.py's harness) so background load hits
them alike; ratios are p50 latency against fp32 of the same round. Writes
``precision-cpu.md`` and ``.json`` to ``--out``. Not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.common import RECIPES, cached_original, load_benchmark_data, machine_facts
from benchmarks.inference import batch_of, measure, ort_session

SETTINGS = {"digits-mlp": ("digits", "mlp"), "fashion-mnist-lenet": ("fashion-mnist", "lenet"),
            "cifar10-cnn": ("cifar10", "cnn")}
MODES = ("int8-dynamic", "int8-static", "fp16")
BATCHES = (1, 256)
FORGET = [0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None, help="folder holding fashion-mnist/ and cifar10/ (npz)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {list(SETTINGS)}")
    ap.add_argument("--calibration-samples", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1, help="torch threads and ORT intra-op threads")
    ap.add_argument("--cache", default="benchmarks/cache", help="where original models are cached")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    args.setting_names = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in args.setting_names:
        if s not in SETTINGS:
            ap.error(f"--settings: unknown '{s}'; expected {list(SETTINGS)}")
    return args


def log(msg: str) -> None:
    print(f"[precision] {msg}", file=sys.stderr, flush=True)


def _config(dataset: str, arch: str, weights: str, data_root: str | None, work: Path) -> Path:
    data = {"dataset": "digits"}
    if dataset != "digits":
        root = Path(data_root)
        data = {"dataset": "npz", "root": str(root / dataset if (root / dataset).is_dir() else root)}
    cfg = {
        "seed": 0, "device": "cpu",
        "model": {"arch": arch, "weights": weights, "num_classes": 10},
        "data": data,
        "forget": {"classes": FORGET, "samples_per_class": 16},
        "release": {"dir": str(work / "releases"), "name": f"{dataset}-{arch}-forget-0"},
        "cache": {"dir": str(work / "cache")},
    }
    path = work / f"{dataset}-{arch}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def bench_setting(name: str, args: argparse.Namespace, work: Path) -> dict:
    from nhle_pipeline.export.onnx_export import INPUT_NAME
    from nhle_pipeline.pipeline.config import load_config
    from nhle_pipeline.pipeline.errors import GateFailure
    from nhle_pipeline.pipeline.quantize import quantize_release
    from nhle_pipeline.pipeline.release.manifest import load_manifest
    from nhle_pipeline.pipeline.run import run_pipeline

    dataset, arch = SETTINGS[name]
    data = load_benchmark_data(dataset, args.data_root)
    _, info = cached_original(Path(args.cache), dataset, arch, data, RECIPES[dataset], 0, torch.device("cpu"))
    log(f"{name}: original {'from cache' if info['cached'] else 'trained'} ({info['path']})")
    config = _config(dataset, arch, info["path"], args.data_root, work)
    t0 = time.perf_counter()
    parent = run_pipeline(load_config(config), config).path
    log(f"{name}: fp32 release in {time.perf_counter() - t0:.1f}s")
    pm = load_manifest(parent)
    rows = {"fp32": {
        "acc_f": pm.metrics.acc_f, "acc_r": pm.metrics.unlearned.acc_r, "delta_acc_r": pm.metrics.delta_acc_r,
        "agreement": 1.0, "max_abs_logit_diff": 0.0, "released": True, "failed_gates": [],
        "bytes": (parent / "model.onnx").stat().st_size, "quantize_s": 0.0,
    }}
    files = {"fp32": parent / "model.onnx"}
    for mode in MODES:
        out = work / "releases" / f"{name}-{mode}"
        t0 = time.perf_counter()
        try:
            m, released = quantize_release(parent, mode, out, calibration_samples=args.calibration_samples).manifest, True
            files[mode] = out / "model.onnx"
        except GateFailure as e:  # recorded, not hidden: the staging folder holds the manifest and model
            m, released = load_manifest(Path(e.report_dir)), False
            files[mode] = Path(e.report_dir) / "model.onnx"
        rows[mode] = {
            "acc_f": m.metrics.acc_f, "acc_r": m.metrics.unlearned.acc_r, "delta_acc_r": m.metrics.delta_acc_r,
            "agreement": m.derived.agreement, "max_abs_logit_diff": m.derived.max_abs_logit_diff,
            "released": released, "failed_gates": [g.name for g in m.gates if not g.passed],
            "bytes": files[mode].stat().st_size, "quantize_s": round(time.perf_counter() - t0, 2),
        }
        log(f"{name} {mode}: Acc_R {rows[mode]['acc_r']:.4f}, agreement {rows[mode]['agreement']:.4f}, "
            f"{'released' if released else 'NOT released: ' + ', '.join(rows[mode]['failed_gates'])}")
    x_all = data.test.x[:256]
    for batch in BATCHES:
        x = batch_of(x_all, batch)
        sessions = {k: ort_session(p, args.threads) for k, p in files.items()}
        timings = measure({k: (lambda v, s=s: s.run(None, {INPUT_NAME: v})[0]) for k, s in sessions.items()}, x)
        for k, t in timings.items():
            rows[k][f"p50_ms_b{batch}"] = t.p50_ms
            rows[k][f"samples_per_s_b{batch}"] = t.samples_per_s
        for k in timings:
            rows[k][f"latency_ratio_b{batch}"] = rows[k][f"p50_ms_b{batch}"] / rows["fp32"][f"p50_ms_b{batch}"]
    return {"dataset": dataset, "model": arch, "forget": FORGET, "test_images": len(data.test),
            "cwm": pm.metrics.cwm.model_dump() if pm.metrics.cwm else None,
            "original_acc_r": pm.metrics.original.acc_r, "rows": rows}


def render_markdown(record: dict) -> str:
    lines = [
        "# Released models in reduced precision (`pipeline quantize`, onnxruntime CPU)",
        "",
        f"`{record['command']}`",
        "",
        "Each fp32 release is `pipeline run` with the default config (calibrated CWM, forget class 0); each "
        "derivative is `pipeline quantize RELEASE --mode M` with the tools' defaults (int8-static: "
        f"onnxruntime `quantize_static`, QDQ, INT8 per-tensor, MinMax on {record['calibration_samples']} training "
        "images; int8-dynamic: `quantize_dynamic`, INT8 weights; fp16: onnxruntime's float16 converter, float32 "
        "I/O). Acc_F, Acc_R (full test split), ΔAcc_R (against the fp32 *original*), agreement (top-1 against "
        "the fp32 release) and the verdict come from the derived release's manifest; *released* means every "
        "gate passed (Acc_F ≤ 0.01, ΔAcc_R ≥ −0.035, agreement ≥ 0.99, masked rows constant). Latency: "
        f"onnxruntime CPU provider, {record['threads']} intra-op thread(s), p50 per call over 300 calls after "
        "20 warm-up calls, the four files alternating in rounds; *× fp32* is p50 / fp32's p50 (< 1: faster).",
        "",
        "| setting | precision | Acc_F | Acc_R | ΔAcc_R | agreement | max \\|Δlogit\\| | released | file KiB "
        "| p50 ms b=1 | × fp32 | p50 ms b=256 | × fp32 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in record["settings"].items():
        for mode in ("fp32", *MODES):
            r = s["rows"][mode]
            verdict = "yes" if r["released"] else "no (" + ", ".join(r["failed_gates"]) + ")"
            lines.append(
                f"| {name} | {mode} | {r['acc_f']:.3f} | {r['acc_r']:.4f} | {r['delta_acc_r']:+.4f} | "
                f"{r['agreement']:.4f} | {r['max_abs_logit_diff']:.3g} | {verdict} | {r['bytes'] / 1024:.0f} | "
                f"{r['p50_ms_b1']:.4f} | {r['latency_ratio_b1']:.2f} | {r['p50_ms_b256']:.3f} | "
                f"{r['latency_ratio_b256']:.2f} |")
    lines += ["", "| machine | |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in record["machine"].items()],
              f"| benchmark wall time | {record['wall_s']:.0f} s |", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    t0 = time.perf_counter()
    facts = machine_facts(args.threads, torch.device("cpu"))
    import onnxruntime

    facts["onnxruntime"] = onnxruntime.__version__
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        for name in args.setting_names:
            work = Path(tmp) / name
            work.mkdir()
            results[name] = bench_setting(name, args, work)
    record = {"command": "python -m benchmarks.precision " + " ".join(argv), "threads": args.threads,
              "calibration_samples": args.calibration_samples, "settings": results, "machine": facts,
              "wall_s": time.perf_counter() - t0}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision-cpu.json").write_text(json.dumps(record, indent=1))
    (out / "precision-cpu.md").write_text(render_markdown(record))
    print(render_markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
