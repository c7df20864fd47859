"""onnxruntime's session options, side by side, on the passes `pipeline run` and `verify` make.

    python -m benchmarks.ort_options                          # resnet18 and cnn at 32 px, 2,048 images
    python -m benchmarks.ort_options --archs resnet18 --images 4096 --repeats 5

Each architecture (seeded random weights: the cost of a pass does not depend on them) is exported
as `pipeline run` exports it, and its verification copy (verify/features.py: the head's input and
the layer-wise audit's tensors as extra outputs) is made the way verify/measure.py makes it. Every
option set then runs the same seeded images through the copy in the evaluation batch size
(pipeline.data.eval_batch_size), the sets interleaved round by round so that a slower minute
of the machine falls on every set alike; the figure is each set's median pass time over the
default's (verify/ort.py's session: onnxruntime's defaults), with the plain shipped file's pass as
the floor the copy's extra outputs are measured against. Writes ``ort-options-<device>.md`` to
``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nhle_pipeline.export.onnx_export import export_onnx
from nhle_pipeline.export.onnx_file import load_onnx
from nhle_pipeline.pipeline.config import DataConfig
from nhle_pipeline.pipeline.data import eval_batch_size
from nhle_pipeline.pipeline.models import build_model, find_heads
from nhle_pipeline.verify.audit_layers import resolve_layers
from nhle_pipeline.verify.features import head_input, with_feature_output

SHAPES = {"resnet18": (3, 32, 32), "cnn": (3, 32, 32), "vgg16_bn": (3, 32, 32), "mobilenet_v3_large": (3, 32, 32),
          "lenet": (1, 28, 28), "mlp": (1, 8, 8)}


def _options() -> dict[str, Callable]:
    """Option set name -> a function that edits a fresh SessionOptions."""
    import onnxruntime as ort

    cores = len(os.sched_getaffinity(0))

    def default(o):
        return o

    def threads(n):
        def f(o):
            o.intra_op_num_threads = n
            return o
        return f

    def extended(o):
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        return o

    def basic(o):
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        return o

    def no_arena(o):
        o.enable_cpu_mem_arena = False
        return o

    def no_spin(o):
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return o

    def no_mem_pattern(o):
        o.enable_mem_pattern = False
        return o

    return {"default (verify/ort.py)": default, f"intra_op_num_threads={cores}": threads(cores),
            "intra_op_num_threads=1": threads(1), "ORT_ENABLE_EXTENDED": extended, "ORT_ENABLE_BASIC": basic,
            "enable_cpu_mem_arena=False": no_arena, "enable_mem_pattern=False": no_mem_pattern,
            "allow_spinning=0": no_spin}


def _session(path: Path, edit: Callable):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=edit(opts), providers=["CPUExecutionProvider"])


def _pass(sess, images: np.ndarray, batch: int) -> float:
    name = sess.get_inputs()[0].name
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        sess.run(None, {name: images[i : i + batch]})
    return time.perf_counter() - t0


def measure(arch: str, n_images: int, repeats: int, scratch: Path) -> list[tuple[str, float, float]]:
    """(option set, median seconds, ratio to the default) for one architecture, plus the plain file."""
    shape = SHAPES[arch]
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, input_shape=shape).eval()
    head = find_heads(model, 10, None, shape)[0]
    shipped = scratch / f"{arch}.onnx"
    export_onnx(model, shape, shipped, opset=18)
    graph = load_onnx(shipped)
    layers = resolve_layers(graph, head_input(graph, head, shipped), None)
    copy = with_feature_output(shipped, head, scratch / f"{arch}.features.onnx", layers)
    images = np.random.default_rng(0).random((n_images, *shape), dtype=np.float32)
    batch = eval_batch_size(DataConfig(), shape)
    sets = {name: _session(copy, edit) for name, edit in _options().items()}
    sets["plain shipped file, default (the floor)"] = _session(shipped, _options()["default (verify/ort.py)"])
    for sess in sets.values():  # warm-up: the first run allocates
        _pass(sess, images[:batch], batch)
    times: dict[str, list[float]] = {k: [] for k in sets}
    for _ in range(repeats):
        for name, sess in sets.items():
            times[name].append(_pass(sess, images, batch))
    base = statistics.median(times["default (verify/ort.py)"])
    return [(name, statistics.median(t), statistics.median(t) / base) for name, t in times.items()]


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,cnn")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    lines = [f"# onnxruntime session options, CPU ({cores} cores, onnxruntime {ort.__version__})", "",
             f"`python -m benchmarks.ort_options --archs {args.archs} --images {args.images} --repeats "
             f"{args.repeats}`: one pass of {args.images} seeded images through the verification copy "
             "(the head's input and the audited layers as extra outputs), each option set's median over "
             f"{args.repeats} interleaved rounds, as a ratio to onnxruntime's defaults (what verify/ort.py opens). "
             "Below 1 is faster.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            rows = measure(arch, args.images, args.repeats, Path(tmp))
            lines += [f"## {arch} {SHAPES[arch]}", "", "| option set | median s | × default |", "| --- | ---: | ---: |"]
            lines += [f"| {name} | {s:.3f} | {r:.3f} |" for name, s, r in rows]
            lines.append("")
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ort-options-cpu.md").write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
