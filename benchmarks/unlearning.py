"""NHLE-CWM against retraining and other unlearning methods: same model, data, seeds and machine.

    python -m benchmarks.unlearning --dataset digits --model mlp --forget 0 --seeds 5
    python -m benchmarks.unlearning --dataset fashion-mnist --data-root ../shared/datasets \\
        --model lenet --forget 0,4 --seeds 3 --methods nhle-cwm,retrain,finetune
    python -m benchmarks.unlearning --quick    # smoke mode: digits, MLP, one seed, every method

For each seed: the original model (trained once per dataset, model, recipe and
seed, cached under benchmarks/cache/), then every method on a copy of it,
timed, then scored with verify/'s metric functions on the test split (and a
training subset for the probe and the membership attack). Writes
``<dataset>-<model>-forget-<ids>.md`` and ``.json`` to ``--out``.
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
    BUDGETS,
    NUM_CLASSES,
    QUICK_BUDGET,
    QUICK_RECIPE,
    RECIPES,
    budget_dict,
    cached_original,
    evaluate,
    load_benchmark_data,
    machine_facts,
)
from benchmarks.methods import DEFAULT_METHODS, METHODS, Task
from benchmarks.nhle_ablations import ABLATIONS
from nhle_pipeline.pipeline.config import CWMConfig, NHLEConfig
from nhle_pipeline.pipeline.data import select_forget_indices
from nhle_pipeline.pipeline.device import resolve_device, seed_everything
from nhle_pipeline.pipeline.errors import PipelineError
from nhle_pipeline.pipeline.train import retained_only
from nhle_pipeline.verify.verification import gap_to_reference

DATASETS = ("digits", "fashion-mnist", "cifar10")
MODELS = ("mlp", "lenet", "cnn")
# The paper's protocol: 16 forget samples for one class, 8 per class for several.
SAMPLES_ONE_CLASS, SAMPLES_PER_CLASS_MULTI = 16, 8
REFERENCE = "retrain"
# (key, header, decimals) of the metric columns, mean ± std over seeds.
METRICS = (
    ("acc_f", "Acc_F", 3), ("acc_r", "Acc_R", 3), ("d_acc_r", "ΔAcc_R", 3),
    ("ratio_d", "Ratio_D", 2), ("probe_auc", "probe AUC", 3), ("mia_efficacy", "MIA-efficacy", 3),
)
# Every method the harness can run: the comparison (benchmarks/methods.py) and NHLE's
# design ablations (benchmarks/nhle_ablations.py, never run unless named).
REGISTRY = {**METHODS, **ABLATIONS}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.unlearning", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=DATASETS, default="digits")
    ap.add_argument("--data-root", default=None, help="folder with train.npz/test.npz, or its parent")
    ap.add_argument("--model", choices=MODELS, default="mlp")
    ap.add_argument("--forget", default="0", help="comma-separated class ids, e.g. 0 or 0,4")
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    ap.add_argument("--methods", default=None,
                    help=f"comma-separated, from {list(REGISTRY)} (default: all but nhle-cwm-retained and "
                         "the abl-* ablations; --quick: all but the ablations)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--cache", default="benchmarks/cache", help="where original models are cached")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: the 2 cores are shared; oversubscribing them is slower)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    ap.add_argument("--quick", action="store_true", help="smoke mode: digits, MLP, forget 0, one seed, small budgets")
    args = ap.parse_args(argv)
    if args.quick:
        args.dataset, args.model, args.forget, args.seeds = "digits", "mlp", "0", 1
    try:
        args.forget_classes = [int(c) for c in args.forget.split(",")]
    except ValueError:
        ap.error(f"--forget: expected comma-separated class ids, got '{args.forget}'")
    if len(set(args.forget_classes)) != len(args.forget_classes) or not all(
        0 <= c < NUM_CLASSES for c in args.forget_classes
    ) or len(args.forget_classes) >= NUM_CLASSES:
        ap.error(f"--forget: distinct ids in 0..{NUM_CLASSES - 1}, not all of them; got {args.forget}")
    if args.methods is None:
        args.methods = ",".join(METHODS if args.quick else DEFAULT_METHODS)
    args.method_names = args.methods.split(",")
    unknown = [m for m in args.method_names if m not in REGISTRY]
    if unknown:
        ap.error(f"--methods: unknown {unknown}; expected some of {list(REGISTRY)}")
    if args.seeds < 1:
        ap.error("--seeds: at least 1")
    return args


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def warm_up(task: Task) -> None:
    """One untimed forward/backward/step, so that the first timed method does not pay for
    PyTorch's lazy initialisation (about 1.5 s on the first call otherwise)."""
    model = task.copy_original()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.nn.functional.cross_entropy(model(task.forget_x), task.forget_y).backward()
    opt.step()


def run_seed(args: argparse.Namespace, data, seed: int, recipe, budget, device: torch.device) -> dict:
    """The original and every method for one seed: metrics, wall time, method info."""
    forget = args.forget_classes
    original, orig_info = cached_original(Path(args.cache), args.dataset, args.model, data, recipe, seed, device)
    log(f"seed {seed}: original {'from cache' if orig_info['cached'] else 'trained'} ({orig_info['path']})")
    base = evaluate(original, data, forget, seed, device)
    per_class = SAMPLES_ONE_CLASS if len(forget) == 1 else SAMPLES_PER_CLASS_MULTI
    idx = select_forget_indices(data.train.y, forget, per_class, "first", seed)
    task = Task(
        original=original, arch=args.model, input_shape=data.input_shape, num_classes=NUM_CLASSES,
        forget_classes=forget, forget_x=torch.from_numpy(data.train.x[idx]).to(device),
        forget_y=torch.from_numpy(data.train.y[idx]).to(device), retained=retained_only(data.train, forget),
        recipe=recipe, budget=budget, seed=seed, device=device,
    )
    out = {"original": {**base, "d_acc_r": 0.0, "train_s": orig_info.get("train_s")}}
    warm_up(task)
    for name in args.method_names:
        seed_everything(seed)
        t0 = time.perf_counter()
        model, info = REGISTRY[name].fn(task)
        elapsed = time.perf_counter() - t0
        with torch.no_grad():
            forget_sample_acc = float((model.eval()(task.forget_x).argmax(1) == task.forget_y).float().mean())
        ev = evaluate(model, data, forget, seed, device)
        out[name] = {**ev, "d_acc_r": ev["acc_r"] - base["acc_r"], "time_s": elapsed,
                     "forget_sample_acc": forget_sample_acc, "info": info}
        log(f"seed {seed}: {name:17s} Acc_F {ev['acc_f']:.3f} ΔAcc_R {out[name]['d_acc_r']:+.3f} "
            f"Ratio_D {ev['ratio_d']:.2f} AUC {ev['probe_auc']:.3f} MIA {ev['mia_efficacy']:.3f} {elapsed:.2f}s")
    if REFERENCE in out:
        ref = out[REFERENCE]
        for name in args.method_names:
            r = out[name]
            r["gap_to_retrain"] = gap_to_reference(r, ref)["mean"]
            r["time_ratio"] = r["time_s"] / ref["time_s"]
    return out


def _stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


def summarise(per_seed: dict[int, dict], names: list[str]) -> dict:
    """mean and std (ddof=1) over seeds of every column; rank by the mean gap to retrain."""
    keys = [k for k, _, _ in METRICS] + ["time_s", "time_ratio", "gap_to_retrain"]
    summary = {}
    for name in ["original", *names]:
        runs = [per_seed[s][name] for s in sorted(per_seed)]
        summary[name] = {k: _stats([r[k] for r in runs]) for k in keys if all(k in r for r in runs)}
    ranked = sorted((n for n in names if n != REFERENCE and "gap_to_retrain" in summary[n]),
                    key=lambda n: summary[n]["gap_to_retrain"]["mean"])
    for i, n in enumerate(ranked, 1):
        summary[n]["rank"] = i
    return summary


def _cell(stat: dict | None, decimals: int, signed: bool = False) -> str:
    if stat is None:
        return "—"
    fmt = f"{{:{'+' if signed else ''}.{decimals}f}}"
    return f"{fmt.format(stat['mean'])} ± {stat['std']:.{decimals}f}"


def render_markdown(record: dict) -> str:
    s, names, summary = record["setting"], record["methods"], record["summary"]
    lines = [
        f"# Unlearning benchmark: {s['dataset']}, {s['model']}, forget {s['forget_classes']}",
        "",
        f"`{record['command']}`",
        "",
        f"{s['seeds']} seed(s) ({', '.join(map(str, range(s['seeds'])))}); mean ± std (ddof=1) over seeds. "
        f"{s['forget_samples_per_class']} forget samples per class, in dataset order. Test split: Acc_F, Acc_R, "
        "Ratio_D; the probe and the membership attack train on a training subset (verify/evidence.py). "
        "ΔAcc_R is against the original model of the same seed. *time* is the unlearning step alone "
        "(retrain: the whole training run); *gap* is the mean |method − retrain| over Acc_F, Acc_R, Ratio_D, "
        "probe AUC and MIA-efficacy, per seed, then averaged; *rank* orders the methods by it (1 = closest).",
        "",
        "| method | data needed | Acc_F | Acc_R | ΔAcc_R | Ratio_D | probe AUC | MIA-efficacy "
        "| time (s) | time / retrain | gap to retrain | rank |",
        "| --- | --- | " + " | ".join(["---:"] * 10) + " |",
    ]
    for name in ["original", *names]:
        row = summary[name]
        data = "—" if name == "original" else REGISTRY[name].data
        cells = [_cell(row.get(k), d, signed=(k == "d_acc_r")) for k, _, d in METRICS]
        cells += [_cell(row.get("time_s"), 2), _cell(row.get("time_ratio"), 4),
                  _cell(row.get("gap_to_retrain"), 3), str(row.get("rank", "—"))]
        lines.append(f"| {name} | {data} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "*data needed*: what the method reads besides the original model. *forget samples*: the "
        f"{s['forget_samples_per_class']} per class above; *retained set*: the training split without the "
        "forgotten classes. Method details: docstrings in benchmarks/methods.py.",
        "",
        f"Recipe (original and retrain): `{json.dumps(record['recipe'])}`; peer budgets: "
        f"`{json.dumps(record['budget'])}`; NHLE: `{json.dumps(record['nhle'])}`; CWM: `{json.dumps(record['cwm'])}`.",
        "",
        "| machine | |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in record["machine"].items()],
        f"| benchmark wall time | {record['wall_s']:.0f} s |",
        "",
    ]
    return "\n".join(lines)


def result_stem(args: argparse.Namespace) -> str:
    stem = f"{args.dataset}-{args.model}-forget-{'-'.join(map(str, args.forget_classes))}"
    return stem + ("-quick" if args.quick else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    try:
        device = resolve_device(args.device)
        machine = machine_facts(args.threads, device)
        data = load_benchmark_data(args.dataset, args.data_root)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    recipe = QUICK_RECIPE if args.quick else RECIPES[args.dataset]
    budget = QUICK_BUDGET if args.quick else BUDGETS[args.dataset]
    log(f"{args.dataset} {args.model} forget {args.forget_classes}: {len(data.train)} train / "
        f"{len(data.test)} test, seeds {args.seeds}, methods {args.method_names}")
    per_seed = {seed: run_seed(args, data, seed, recipe, budget, device) for seed in range(args.seeds)}
    record = {
        "command": "python -m benchmarks.unlearning " + " ".join(argv),
        "setting": {
            "dataset": args.dataset, "model": args.model, "forget_classes": args.forget_classes,
            "seeds": args.seeds, "quick": args.quick,
            "forget_samples_per_class": SAMPLES_ONE_CLASS if len(args.forget_classes) == 1 else SAMPLES_PER_CLASS_MULTI,
        },
        "methods": args.method_names,
        "data_needed": {n: REGISTRY[n].data for n in args.method_names},
        "recipe": recipe.model_dump(), "budget": budget_dict(budget),
        "nhle": NHLEConfig().resolved(), "cwm": CWMConfig().model_dump(),
        "machine": machine,
        "summary": summarise(per_seed, args.method_names),
        "per_seed": {str(s): r for s, r in per_seed.items()},
    }
    record["wall_s"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = result_stem(args)
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / f"{stem}.md").write_text(render_markdown(record))
    log(f"wrote {out / stem}.md and .json ({record['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
