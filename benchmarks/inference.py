"""CPU inference cost of a release: onnxruntime on model.onnx vs the original in PyTorch eager.

    python -m benchmarks.inference --release releases/digits-forget-0 --config examples/digits.yaml \
        [--release R2 --config C2 ...] [--threads 1,2] [--out benchmarks/results/inference-cpu.md]

Answers what a serving team asks before swapping a model in: is the shipped
ONNX file at least as fast as the PyTorch model it replaces, and does the
unlearning (NHLE + CWM) cost anything at inference? CWM edits weights only, so
the released graph must equal an export of the original node for node and
run at the same speed. Both engines run on the same machine, the same inputs
(test samples), the same batch sizes and the same thread count; engines are
interleaved in rounds so background load hits them alike. Also reports each
pipeline stage's share of the run, from the release's manifest. Not run by
the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BATCH_SIZES = (1, 32, 256)
WARMUP_CALLS = 20  # per engine and batch size: allocator, thread pool and ORT arena warm-up
# Engines alternate in many short rounds so that bursts of background load
# (a shared machine) hit every engine alike; 20 x 15 = 300 timed calls each,
# enough for a p99.
ROUNDS = 20
CALLS_PER_ROUND = 15
P50, P99 = 50, 99
DEFAULT_OUT = Path("benchmarks/results/inference-cpu.md")

ENGINES = ("pytorch", "ort_original", "ort_released")
LABELS = {
    "pytorch": "PyTorch eager, original weights",
    "ort_original": "onnxruntime, export of the original",
    "ort_released": "onnxruntime, released model.onnx",
}


@dataclass
class Timing:
    samples_per_s: float  # batch / p50 latency: robust to the outliers a shared machine adds
    mean_samples_per_s: float  # batch * calls / total time: what a saturated server would see
    p50_ms: float
    p99_ms: float


def timing(latencies_s: list[float], batch: int) -> Timing:
    lat = np.asarray(latencies_s)
    p50 = float(np.percentile(lat, P50))
    return Timing(batch / p50, batch * len(lat) / lat.sum(), p50 * 1e3, float(np.percentile(lat, P99)) * 1e3)


def load_average() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return " / ".join(f"{x:.2f}" for x in load)


def default_threads() -> str:
    """One thread (immune to a busy neighbour) and every core (what a dedicated server uses)."""
    cores = os.cpu_count() or 1
    return "1" if cores == 1 else f"1,{cores}"


def busy_note() -> list[str]:
    """Say so when other work shares the CPUs: multi-thread timings then measure contention."""
    cores = os.cpu_count() or 1
    if not hasattr(os, "getloadavg") or os.getloadavg()[0] < cores:
        return []
    return [
        "",
        f"**The machine was shared** (1-min load average ≥ its {cores} cores when this started): "
        "timings with all cores mostly measure contention with other processes, PyTorch's thread pool "
        "suffering most; the 1-thread tables are the fair comparison, and p99 reflects the neighbours.",
    ]


def machine_facts(thread_counts: list[int]) -> dict[str, str]:
    """Cores, CPU model and library versions: the numbers mean nothing without them."""
    import onnx
    import onnxruntime
    import torch

    from benchmarks.common import cpu_model

    return {
        "CPU": cpu_model(),
        "logical cores": str(os.cpu_count()),
        "threads (torch.set_num_threads = ORT intra_op_num_threads)": ", ".join(map(str, thread_counts)),
        "load average at start (1/5/15 min)": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
    }


def ort_session(path: Path, threads: int):
    """A CPU-provider session with a fixed thread count (servers pin threads too)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def batch_of(x: np.ndarray, n: int) -> np.ndarray:
    """``n`` test samples (repeated if the split is smaller), contiguous float32 (n, C, H, W)."""
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n], dtype=np.float32)


def measure(engines: dict[str, Callable[[np.ndarray], np.ndarray]], x: np.ndarray) -> dict[str, Timing]:
    """Warm every engine up, then time them in alternating rounds."""
    lat: dict[str, list[float]] = {k: [] for k in engines}
    for fn in engines.values():
        for _ in range(WARMUP_CALLS):
            fn(x)
    for _ in range(ROUNDS):
        for name, fn in engines.items():
            for _ in range(CALLS_PER_ROUND):
                t0 = time.perf_counter()
                fn(x)
                lat[name].append(time.perf_counter() - t0)
    return {k: timing(v, len(x)) for k, v in lat.items()}


def bench_release(release: Path, config: Path, thread_counts: list[int]) -> list[str]:
    """Markdown section for one release: graph facts, timings per thread count, stage shares."""
    import onnx
    import torch

    from nhle_pipeline.export.onnx_export import INPUT_NAME, export_onnx
    from nhle_pipeline.pipeline.checkpoint import load_weights
    from nhle_pipeline.pipeline.config import load_config
    from nhle_pipeline.pipeline.loading import build_configured_model, load_data

    cfg = load_config(config)
    data = load_data(cfg)
    model, _ = build_configured_model(cfg, data)
    load_weights(model, cfg.model.weights, trust_pickle=cfg.model.trust_pickle)
    model.eval()
    released = release / "model.onnx"
    manifest = json.loads((release / "manifest.json").read_text())

    @torch.inference_mode()
    def pytorch(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).numpy()

    results: dict[int, dict[int, dict[str, Timing]]] = {}  # threads -> batch -> engine -> timing
    with tempfile.TemporaryDirectory() as tmp:
        original = Path(tmp) / "original.onnx"
        export_onnx(model, data.input_shape, original, opset=cfg.export.opset)
        g_orig, g_rel = onnx.load(str(original)).graph, onnx.load(str(released)).graph
        for threads in thread_counts:
            torch.set_num_threads(threads)
            sess_orig, sess_rel = ort_session(original, threads), ort_session(released, threads)
            engines = {
                "pytorch": pytorch,
                "ort_original": lambda x, s=sess_orig: s.run(None, {INPUT_NAME: x})[0],
                "ort_released": lambda x, s=sess_rel: s.run(None, {INPUT_NAME: x})[0],
            }
            probe = batch_of(data.test.x, max(BATCH_SIZES))
            parity = float(np.max(np.abs(engines["ort_original"](probe) - pytorch(probe))))
            results[threads] = {b: measure(engines, batch_of(data.test.x, b)) for b in BATCH_SIZES}

    ops_o, ops_r = [n.op_type for n in g_orig.node], [n.op_type for n in g_rel.node]
    out = [
        f"## {release.name}",
        "",
        f"`{cfg.model.arch}` from `{cfg.model.weights}`, input (batch, {', '.join(map(str, data.input_shape))}) "
        f"float32, {cfg.model.num_classes} classes; inputs are {data.name} test samples. "
        f"Sanity: max |ORT(original export) − PyTorch| = {parity:.2e} on {len(probe)} samples.",
        "",
        f"Graph: export of the original {len(ops_o)} nodes, release {len(ops_r)} nodes; "
        f"op types {'identical' if ops_o == ops_r else 'DIFFER'} ({' → '.join(ops_r)}); "
        f"model.onnx {released.stat().st_size / 1024:.0f} KiB.",
        "",
    ]
    for threads, by_batch in results.items():
        out += [
            f"### {threads} thread{'s' if threads > 1 else ''}",
            "",
            "| batch | engine | samples/s (at p50) | samples/s (mean) | p50 ms | p99 ms |",
            "| ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        for b, res in by_batch.items():
            out += [
                f"| {b} | {LABELS[k]} | {t.samples_per_s:,.0f} | {t.mean_samples_per_s:,.0f} "
                f"| {t.p50_ms:.4f} | {t.p99_ms:.3f} |"
                for k, t in res.items()
            ]
        out += [
            "",
            "| batch | throughput ORT released / PyTorch | p50 latency ORT released / PyTorch "
            "| throughput released / original export (CWM cost; 1.00 = none) |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for b, r in by_batch.items():
            t, o, p = r["ort_released"], r["ort_original"], r["pytorch"]
            out.append(
                f"| {b} | {t.samples_per_s / p.samples_per_s:.3g}× | {t.p50_ms / p.p50_ms:.3g}× "
                f"| {t.samples_per_s / o.samples_per_s:.2f}× |"
            )
        out.append("")
    return out + [*stage_shares(manifest), ""]


def stage_shares(manifest: dict) -> list[str]:
    """Each stage's share of the run, from manifest.json ``timings_s``.

    The release step (fsync + rename) finishes after the manifest is written,
    so it is not in the file; the total is that of the recorded stages.
    """
    timings = manifest.get("timings_s", {})
    total = sum(timings.values())
    out = [
        f"Pipeline stages of this release's run (manifest `timings_s`, torch device "
        f"`{manifest['runtime']['torch_device']}`, {manifest['runtime']['onnxruntime_provider']}):",
        "",
        "| stage | seconds | share |",
        "| --- | ---: | ---: |",
    ]
    out += [f"| {k} | {v:.3f} | {v / total:.1%} |" for k, v in timings.items()] if total else []
    out.append(f"| **recorded total** | {total:.3f} | 100% |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release", type=Path, action="append", required=True, help="release folder (repeatable)")
    ap.add_argument("--config", type=Path, action="append", required=True, help="its config, same order")
    ap.add_argument(
        "--threads", default=default_threads(),
        help="comma-separated thread counts, each used by both engines (default: 1 and all cores)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if len(args.release) != len(args.config):
        ap.error("give one --config per --release")

    thread_counts = [int(t) for t in str(args.threads).split(",")]
    facts = machine_facts(thread_counts)
    cmd = " ".join(
        ["python -m benchmarks.inference"]
        + [f"--release {r} --config {c}" for r, c in zip(args.release, args.config, strict=True)]
        + [f"--threads {args.threads}"]
    )
    lines = [
        "# CPU inference: released ONNX in onnxruntime vs the original PyTorch model",
        "",
        f"`{cmd}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Batch sizes {BATCH_SIZES}; "
        f"per engine and batch: {WARMUP_CALLS} warm-up calls, then {ROUNDS} rounds × {CALLS_PER_ROUND} timed "
        "calls, engines alternating between rounds. p50/p99 are per-call latencies; samples/s (at p50) = "
        "batch / p50, samples/s (mean) = batch × calls / total time. Ratios use samples/s at p50 and p50: "
        "> 1 for throughput and < 1 for latency favour onnxruntime.",
        *busy_note(),
        "",
        "| machine | |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in facts.items()],
        "",
    ]
    for release, config in zip(args.release, args.config, strict=True):
        lines += bench_release(release, config, thread_counts)
    lines.append(f"Load average at the end (1/5/15 min): {load_average()}.")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
