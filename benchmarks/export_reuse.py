"""The exporter's decomposition table built once per process, against built at every export.

    python -m benchmarks.export_reuse                        # mlp (digits) and resnet18 (32 px)
    python -m benchmarks.export_reuse --archs resnet18 --repeats 5

A `pipeline run` exports twice (the original for the baseline, the unlearned model) and
`pipeline verify` once or twice more; torch.onnx builds its table of every torchlib
decomposition at each export (export/onnx_export.py ``_registry_reused`` keeps the first).
After one warm-up export (imports, the first table), each architecture is exported
``--repeats`` times each way, the two ways interleaved round by round; the figure is the
median export time with the table reused over the median without, and every file is checked
byte-identical to the first. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nhle_pipeline.export import onnx_export
from nhle_pipeline.pipeline.models import build_model

SHAPES = {"mlp": (1, 8, 8), "resnet18": (3, 32, 32), "cnn": (3, 32, 32)}


def _export(model, shape, path: Path, reuse: bool) -> tuple[float, str]:
    saved = onnx_export._registry_reused
    if not reuse:
        onnx_export._registry_reused = contextlib.nullcontext
    try:
        t = time.perf_counter()
        onnx_export.export_onnx(model, shape, path, opset=18)
        seconds = time.perf_counter() - t
    finally:
        onnx_export._registry_reused = saved
    return seconds, hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["mlp", "resnet18"], choices=sorted(SHAPES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = ["| arch | export, table rebuilt (s) | export, table reused (s) | reused / rebuilt | files identical |",
            "| --- | ---: | ---: | ---: | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            torch.manual_seed(0)
            shape = SHAPES[arch]
            model = build_model(arch, num_classes=10, input_shape=shape)
            _, first = _export(model, shape, Path(tmp) / "warm.onnx", reuse=True)
            times: dict[bool, list[float]] = {False: [], True: []}
            digests = set()
            for i in range(args.repeats):
                for reuse in (False, True):
                    s, digest = _export(model, shape, Path(tmp) / f"{arch}-{i}-{reuse}.onnx", reuse)
                    times[reuse].append(s)
                    digests.add(digest)
            rebuilt, reused = statistics.median(times[False]), statistics.median(times[True])
            rows.append(f"| {arch} | {rebuilt:.2f} | {reused:.2f} | {reused / rebuilt:.2f}× | "
                        f"{'yes' if digests == {first} else 'NO'} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
