"""Screen NHLE settings on one large model: test-split figures only, cheap enough to sweep.

    python -m benchmarks.nhle_screen --dataset cifar10 --data-root ../shared/datasets \\
        --config benchmarks/configs/cifar10-resnet18.yaml --forget 0 --test-samples 2000 \\
        --try default --try 'margin 2={"stop_margin": 2.0}' --try abl-no-anchor

The harness (benchmarks/unlearning.py) scores a method with the probe, the
membership attack and a relearning attack: on a ResNet-18 on 2 CPU cores that
is minutes per method. This screen keeps what decides a default, paired
against the same original on the same images: Acc_F, Acc_R and ΔAcc_R with
CWM (mode ``suppress``) applied, Ratio_D of the penultimate features, and the
steps NHLE took. Settings come as ``--try``: ``default`` (the pipeline's
``NHLEConfig()``), the name of any harness method or ablation
(benchmarks/methods.py, benchmarks/nhle_ablations.py), or ``LABEL={json}``:
NHLEConfig fields over the defaults. The forget samples are the harness's
(16 of one class, 8 per class for several, in dataset order). A setting the
screen favours still goes through the harness before it becomes a default.

Writes ``<dataset>-<model>-forget-<ids>-screen.md`` and ``.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (
    NUM_CLASSES,
    cached_original,
    load_benchmark_data,
    logits_and_features,
    machine_facts,
)
from benchmarks.methods import nhle_cwm
from benchmarks.unlearning import REGISTRY, protocol_task
from nhle_pipeline.pipeline.config import NHLEConfig, load_config
from nhle_pipeline.pipeline.device import resolve_device, seed_everything
from nhle_pipeline.pipeline.errors import PipelineError
from nhle_pipeline.verify.evidence import separability
from nhle_pipeline.verify.metrics import accuracy


def parse_setting(text: str):
    """``default`` | a harness method name | ``LABEL={json of NHLEConfig fields}`` -> (label, fn(task))."""
    if text == "default":
        return "default", lambda task: nhle_cwm(task)
    if text in REGISTRY:
        return text, REGISTRY[text].fn
    label, sep, body = text.partition("=")
    if not sep:
        raise ValueError(f"--try '{text}': expected 'default', a method from {sorted(REGISTRY)}, or LABEL={{json}}")
    overrides = json.loads(body)
    cfg = NHLEConfig(**overrides)  # validates the field names and types
    return label, lambda task: nhle_cwm(task, nhle=cfg)


def test_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded subset of the test split with the same number of images of every class (or all)."""
    if n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    per = n // NUM_CLASSES
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), per, replace=False)
                                   for c in range(NUM_CLASSES)]))


def score(model, x: np.ndarray, y: np.ndarray, forget: list[int], device) -> dict:
    logits, feats = logits_and_features(model, x, device)
    acc = accuracy(logits, y, forget, NUM_CLASSES)
    return {"acc_f": acc.acc_f, "acc_r": acc.acc_r, "ratio_d": separability(feats, y, forget)[2],
            "per_class": acc.per_class, "pred": logits.argmax(1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.nhle_screen", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10", choices=("digits", "fashion-mnist", "cifar10"))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--config", required=True, help="pipeline config: model.arch and the trained model.weights")
    ap.add_argument("--forget", default="0")
    ap.add_argument("--test-samples", type=int, default=2000, help="balanced seeded test subset (0: all)")
    ap.add_argument("--try", dest="tries", action="append", default=[], help="a setting (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/ablations")
    args = ap.parse_args(argv)
    try:
        forget = [int(c) for c in args.forget.split(",")]
        settings = [parse_setting(t) for t in (args.tries or ["default"])]
        cfg = load_config(args.config)
        if cfg.model.weights is None or not Path(cfg.model.weights).is_file():
            raise PipelineError(f"--config: model.weights '{cfg.model.weights}' is not there (pipeline train CONFIG)")
        data = load_benchmark_data(args.dataset, args.data_root)
    except (ValueError, PipelineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device = resolve_device("cpu")
    t_start = time.perf_counter()
    machine = machine_facts(args.threads, device)
    seed = cfg.seed
    original, info = cached_original(Path("benchmarks/cache"), args.dataset, cfg.model.arch, data, cfg.train, seed,
                                     device, Path(cfg.model.weights))
    sub = test_subset(data.test.y, args.test_samples or len(data.test), seed)
    x, y = data.test.get(sub), data.test.y[sub]
    base = score(original, x, y, forget, device)
    task, _ = protocol_task(original, cfg.model.arch, data, forget, cfg.train, None, seed, device)
    keep = ~np.isin(y, forget)
    rows = {"original": {k: v for k, v in base.items() if k != "pred"}}
    print(f"original: Acc_F {base['acc_f']:.3f} Acc_R {base['acc_r']:.3f} Ratio_D {base['ratio_d']:.3f}",
          file=sys.stderr, flush=True)
    for label, fn in settings:
        seed_everything(seed)
        t0 = time.perf_counter()
        model, run_info = fn(task)
        elapsed = time.perf_counter() - t0
        r = score(model, x, y, forget, device)
        flipped = int((r.pop("pred") != base["pred"])[keep].sum())
        rows[label] = {**r, "d_acc_r": r["acc_r"] - base["acc_r"], "retained_flipped": flipped,
                       "time_s": elapsed, "info": run_info}
        d_class = " ".join(f"{a - b:+.3f}" for a, b in zip(r["per_class"], base["per_class"], strict=True))
        print(f"{label:24s} Acc_F {r['acc_f']:.3f} ΔAcc_R {rows[label]['d_acc_r']:+.4f} Ratio_D {r['ratio_d']:.3f} "
              f"flipped {flipped} {run_info} {elapsed:.1f}s; per class {d_class}", file=sys.stderr, flush=True)
    record = {"command": "python -m benchmarks.nhle_screen " + " ".join(argv if argv is not None else sys.argv[1:]),
              "config": args.config, "weights": info, "forget": forget, "test_samples": int(len(sub)),
              "retained_test_samples": int(keep.sum()), "rows": rows, "machine": machine,
              "wall_s": time.perf_counter() - t_start}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.dataset}-{cfg.model.arch}-forget-{'-'.join(map(str, forget))}-screen"
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    (out / f"{stem}.md").write_text(render(record))
    print(f"wrote {out / stem}.md", file=sys.stderr)
    return 0


def render(record: dict) -> str:
    lines = [f"# NHLE screen: {record['config']}, forget {record['forget']}", "", f"`{record['command']}`", "",
             f"Balanced seeded test subset of {record['test_samples']} images ({record['retained_test_samples']} of "
             "retained classes); CWM `suppress` after every setting; ΔAcc_R paired against the original on the "
             "same images; *flipped*: retained-class test images whose prediction changed.", "",
             "| setting | Acc_F | Acc_R | ΔAcc_R | Ratio_D | flipped | NHLE steps (stop) | time (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for label, r in record["rows"].items():
        if label == "original":
            lines.append(f"| original | {r['acc_f']:.3f} | {r['acc_r']:.3f} | — | {r['ratio_d']:.3f} | — | — | — |")
            continue
        info = r["info"]
        lines.append(f"| {label} | {r['acc_f']:.3f} | {r['acc_r']:.3f} | {r['d_acc_r']:+.4f} | {r['ratio_d']:.3f} | "
                     f"{r['retained_flipped']} | {info.get('steps')} ({info.get('stopped', '—')}) | {r['time_s']:.1f} |")
    lines += ["", "| machine | |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in record["machine"].items()],
              f"| wall time | {record['wall_s']:.0f} s |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
