"""NHLE-CWM against retraining and other unlearning methods: same model, data, seeds and machine.

    python -m benchmarks.unlearning --dataset digits --model mlp --forget 0 --seeds 5
    python -m benchmarks.unlearning --dataset fashion-mnist --data-root ../shared/datasets \\
        --model lenet --forget 0,4 --seeds 3 --methods nhle-cwm,retrain,finetune
    python -m benchmarks.unlearning --quick    # smoke mode: digits, MLP, one seed, every method
    python -m benchmarks.unlearning --dataset cifar10 --config benchmarks/configs/cifar10-resnet18.yaml \
        --forget 0 --methods nhle-cwm,nhle-cwm-paper,cwm-only,retrain --threads 2

For each seed: the original model (trained once per dataset, model, recipe and
seed, cached under benchmarks/cache/; with ``--config``, the config's architecture and
``train:`` recipe, and for the config's seed the weights ``pipeline train CONFIG`` wrote), then every method on a copy of it,
timed, then scored with verify/'s metric functions on the test split (and a
training subset for the probe and the membership attack), then attacked by
relearning (verify/relearn.py: k = 1, 4, 16 held-out samples per forgotten
class, 64 small SGD steps, and the passive retained-only drift). The representation
columns (verify/representation.py): a fresh linear probe's recovery of the forgotten
classes (LPR_F) and of the retained ones (LPR_R), and linear CKA to the original's and
to the retrained model's features, at the head's input and at the output of the model's
last stage before it (benchmarks/common.py ``stage_layer``), and the fraction of the
original->retrain gap each method closes on LPR_F (both layers), Ratio_D and relearn AUC. Writes
``<dataset>-<model>-forget-<ids>.md`` and ``.json`` to ``--out``. Each finished seed's
results are also kept under ``--cache``/seeds/; ``--resume`` takes them from there, so a run
cut short (or split over several commands of limited time) goes on from the seed it lost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (
    BUDGETS,
    LAYERS,
    NUM_CLASSES,
    QUICK_BUDGET,
    QUICK_RECIPE,
    RECIPES,
    budget_dict,
    cached_original,
    code_version,
    data_fingerprint,
    evaluate_with_features,
    load_benchmark_data,
    machine_facts,
    stage_layer,
)
from benchmarks.methods import DEFAULT_METHODS, METHODS, Task
from benchmarks.nhle_ablations import ABLATIONS
from nhle_pipeline.pipeline.config import CWMConfig, NHLEConfig
from nhle_pipeline.pipeline.data import select_forget_indices
from nhle_pipeline.pipeline.device import resolve_device, seed_everything
from nhle_pipeline.pipeline.errors import PipelineError
from nhle_pipeline.pipeline.models import build_model, find_head
from nhle_pipeline.pipeline.train import retained_only
from nhle_pipeline.verify.relearn import RelearnConfig, relearn
from nhle_pipeline.verify.representation import NOISE, gap_closed, linear_cka
from nhle_pipeline.verify.verification import GAP_KEYS, gap_to_reference

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
RELEARN = RelearnConfig()
# The harness's gap to retrain: verify's GAP_KEYS and the relearning AUC (mean over k).
HARNESS_GAP_KEYS = (*GAP_KEYS, "relearn_auc")
RELEARN_METRICS = (("relearn_auc", "relearn AUC", 2), ("passive_acc_f", "passive Acc_F", 3))
# The representation columns, per layer (LAYERS: the head's input, the last stage's output;
# keys of the stage layer end in "_stage"): (key, header, decimals).
REPRESENTATION_METRICS = (
    ("lpr_f", "LPR_F", 3), ("lpr_r", "LPR_R", 3),
    ("cka_original", "CKA to original", 3), ("cka_retrain", "CKA to retrain", 3),
)
# The metrics whose original->retrain gap closed is reported (verify.representation.gap_closed),
# with their headers; in the tables it is the fraction of the gap between the means over seeds.
# CKA to retrain: from the original's CKA to the retrained model's features toward retrain's own 1
# (moving away from the original in any direction lowers CKA to the original; only a move toward
# retraining raises this one).
GAP_CLOSED_KEYS = (("lpr_f", "LPR_F head"), ("lpr_f_stage", "LPR_F stage"), ("ratio_d", "Ratio_D"),
                   ("relearn_auc", "relearn AUC"), ("cka_retrain", "CKA to retrain head"),
                   ("cka_retrain_stage", "CKA to retrain stage"))


def layer_key(key: str, layer: str) -> str:
    """A representation metric's key at ``layer`` ("head": as is; else suffixed)."""
    return key if layer == "head" else f"{key}_{layer}"


REPRESENTATION_KEYS = [layer_key(k, layer) for layer in LAYERS for k, _, _ in REPRESENTATION_METRICS]
# Every method the harness can run: the comparison (benchmarks/methods.py) and NHLE's
# design ablations (benchmarks/nhle_ablations.py, never run unless named).
REGISTRY = {**METHODS, **ABLATIONS}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.unlearning", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=DATASETS, default="digits")
    ap.add_argument("--data-root", default=None, help="folder with train.npz/test.npz, or its parent")
    ap.add_argument("--model", choices=MODELS, default="mlp")
    ap.add_argument("--config", default=None,
                    help="a pipeline config (e.g. benchmarks/configs/cifar10-resnet18.yaml): its model.arch "
                         "replaces --model, its train: section is the recipe of the original and of retrain, "
                         "and its model.weights (when written by 'pipeline train') is the original of its seed; "
                         "the data still comes from --dataset/--data-root")
    ap.add_argument("--forget", default="0", help="comma-separated class ids, e.g. 0 or 0,4")
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    ap.add_argument("--methods", default=None,
                    help=f"comma-separated, from {list(REGISTRY)} (default: all but nhle-cwm-retained and "
                         "the abl-* ablations; --quick: all but the ablations)")
    ap.add_argument("--no-relearn", dest="relearn", action="store_false",
                    help="skip the relearning attack (on a ResNet-18 on 2 CPU cores it costs several minutes "
                         "per method); its columns then read '—' and the gap to retrain leaves it out")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--cache", default="benchmarks/cache",
                    help="where original models are cached, and each finished seed's results (seeds/)")
    ap.add_argument("--resume", action="store_true",
                    help="take a seed's results from --cache/seeds/ where an earlier run of the same setting, "
                         "methods, recipe, budgets, device and code finished it (a run cut short, or one "
                         "split over several commands), instead of running it again")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: the 2 cores are shared; oversubscribing them is slower)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    ap.add_argument("--quick", action="store_true", help="smoke mode: digits, MLP, forget 0, one seed, small budgets")
    ap.add_argument("--readme-table", nargs="?", const="evidence", choices=("evidence", "representation", "nhle", "retained"), default=None,
                    help="print one of the README's tables from the results in --out, run nothing")
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
    args.pipeline_config = None
    if args.config is not None:
        from nhle_pipeline.pipeline.config import load_config

        try:
            args.pipeline_config = load_config(args.config)
        except PipelineError as e:
            ap.error(f"--config: {e}")
        if args.pipeline_config.model.num_classes != NUM_CLASSES:
            ap.error(f"--config: model.num_classes must be {NUM_CLASSES} for the benchmark datasets")
        args.model = args.pipeline_config.model.arch
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


def relearn_figures(model, data, forget: list[int], exclude: np.ndarray, seed: int, device) -> dict:
    """verify/relearn.py's flat figures (``relearn_*``, ``passive_acc_f``), its curves under
    "relearn", and its wall time; the held-out samples exclude the forget samples."""
    t0 = time.perf_counter()
    r = relearn(model, forget, NUM_CLASSES, data.train.get, data.train.y, data.test.get, data.test.y,
                exclude=exclude, seed=seed, cfg=RELEARN, device=device)
    return {**r.summary(), "relearn": r.to_dict(), "relearn_s": time.perf_counter() - t0}


def harness_gap(r: dict, ref: dict) -> float:
    """Mean |method - retrain| over ``HARNESS_GAP_KEYS`` (the finite ones)."""
    gaps = gap_to_reference(r, ref)
    vals = [gaps[k] for k in GAP_KEYS]
    if "relearn_auc" in r and "relearn_auc" in ref:
        vals.append(abs(r["relearn_auc"] - ref["relearn_auc"]))
    finite = [v for v in vals if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def protocol_task(original, arch: str, data, forget: list[int], recipe, budget, seed: int, device) -> tuple[Task, np.ndarray]:
    """The paper's protocol as a Task: 16 forget samples of one class (8 per class for several), in dataset
    order, and the retained split; with the forget samples' indices in the training split."""
    per_class = SAMPLES_ONE_CLASS if len(forget) == 1 else SAMPLES_PER_CLASS_MULTI
    idx = select_forget_indices(data.train.y, forget, per_class, "first", seed)
    task = Task(
        original=original, arch=arch, input_shape=data.input_shape, num_classes=NUM_CLASSES,
        forget_classes=forget, forget_x=torch.from_numpy(data.train.x[idx]).to(device),
        forget_y=torch.from_numpy(data.train.y[idx]).to(device), retained=retained_only(data.train, forget),
        recipe=recipe, budget=budget, seed=seed, device=device,
    )
    return task, idx


def run_seed(args: argparse.Namespace, data, seed: int, recipe, budget, device: torch.device) -> dict:
    """The original and every method for one seed: metrics, wall time, method info."""
    forget = args.forget_classes
    cfg = args.pipeline_config
    trained = Path(cfg.model.weights) if cfg is not None and cfg.model.weights and seed == cfg.seed else None
    original, orig_info = cached_original(Path(args.cache), args.dataset, args.model, data, recipe, seed, device,
                                          trained)
    log(f"seed {seed}: original {'from cache' if orig_info['cached'] else 'trained'} ({orig_info['path']})")
    base, base_feats = evaluate_with_features(original, data, forget, seed, device)
    feats = {"original": base_feats}  # test-split features of every model, for CKA (not kept)
    task, idx = protocol_task(original, args.model, data, forget, recipe, budget, seed, device)
    out = {"original": {**base, "d_acc_r": 0.0, "train_s": orig_info.get("train_s"),
                        "weights": {k: orig_info[k] for k in ("path", "sha256", "from") if k in orig_info},
                        **(relearn_figures(original, data, forget, idx, seed, device) if args.relearn else {})}}
    warm_up(task)
    for name in args.method_names:
        seed_everything(seed)
        t0 = time.perf_counter()
        model, info = REGISTRY[name].fn(task)
        elapsed = time.perf_counter() - t0
        with torch.no_grad():
            forget_sample_acc = float((model.eval()(task.forget_x).argmax(1) == task.forget_y).float().mean())
        ev, feats[name] = evaluate_with_features(model, data, forget, seed, device)
        out[name] = {**ev, "d_acc_r": ev["acc_r"] - base["acc_r"], "time_s": elapsed,
                     "forget_sample_acc": forget_sample_acc, "info": info,
                     **(relearn_figures(model, data, forget, idx, seed, device) if args.relearn else {})}
        r = out[name]
        relearned = (f"; relearn steps {_steps_text([r[f'relearn_steps_k{k}'] for k in RELEARN.ks])} "
                     f"AUC {r['relearn_auc']:.2f} passive {r['passive_acc_f']:.2f} ({r['relearn_s']:.1f}s)"
                     if args.relearn else "")
        log(f"seed {seed}: {name:17s} Acc_F {ev['acc_f']:.3f} ΔAcc_R {r['d_acc_r']:+.3f} "
            f"Ratio_D {ev['ratio_d']:.2f} AUC {ev['probe_auc']:.3f} MIA {ev['mia_efficacy']:.3f} "
            f"LPR_F {ev['lpr_f']:.3f}/{ev['lpr_f_stage']:.3f} {elapsed:.2f}s" + relearned)
    representation_figures(out, feats)
    if REFERENCE in out:
        ref = out[REFERENCE]
        for name in args.method_names:
            r = out[name]
            r["gap_to_retrain"] = harness_gap(r, ref)
            r["time_ratio"] = r["time_s"] / ref["time_s"]
    return out


def representation_figures(out: dict, feats: dict[str, dict[str, np.ndarray]]) -> None:
    """Per model (the original and every method of one seed), in place: linear CKA of its test
    features to the original's and (when it ran) the retrained model's at each of ``LAYERS``, and
    the fraction of the original->retrain gap it closed on each of ``GAP_CLOSED_KEYS``."""
    for name, r in out.items():
        for layer in LAYERS:
            r[layer_key("cka_original", layer)] = _num(linear_cka(feats[name][layer], feats["original"][layer]))
            if REFERENCE in feats:
                r[layer_key("cka_retrain", layer)] = _num(linear_cka(feats[name][layer], feats[REFERENCE][layer]))
    gap_closed_figures(out)


def gap_closed_figures(out: dict) -> None:
    """Per model of one seed, in place: the fraction of the original->retrain gap closed on each of
    ``GAP_CLOSED_KEYS`` (None where it cannot be told: no retrain, a missing value, no gap)."""
    if REFERENCE not in out:
        return
    orig, ref = out["original"], out[REFERENCE]
    for r in out.values():
        for key, _ in GAP_CLOSED_KEYS:
            if all(key in x for x in (r, orig, ref)):
                r[f"gap_closed_{key}"] = _num(gap_closed(*(_nan(x[key]) for x in (r, orig, ref))))


def _num(x: float | None) -> float | None:
    """``x`` as a float, or None where it is missing, NaN or infinite (JSON has no NaN)."""
    return float(x) if x is not None and np.isfinite(x) else None


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def run_settings(args: argparse.Namespace, recipe, budget) -> dict:
    """The settings every method ran with (recorded in the results, and part of a seed's key)."""
    return {
        "recipe": recipe.model_dump(), "budget": budget_dict(budget),
        "nhle": NHLEConfig().resolved(), "cwm": CWMConfig().model_dump(),
        "relearn": {**RELEARN.__dict__, "ks": list(RELEARN.ks), "eval_steps": list(RELEARN.eval_steps)}
        if args.relearn else None,
    }


def seed_results_path(args: argparse.Namespace, data, seed: int, recipe, budget, device: torch.device) -> Path:
    """Where one seed's results are kept (``--cache``/seeds/): keyed by everything that decides them
    (data, model, forget request, methods, recipe, budgets, NHLE/CWM/relearning settings, the trained
    original of ``--config``, the device type and the code's commit)."""
    from nhle_pipeline.pipeline.checkpoint import sha256_file

    cfg = args.pipeline_config
    weights = Path(cfg.model.weights) if cfg is not None and cfg.model.weights else None
    key = {
        "data": data_fingerprint(args.dataset, data), "model": args.model, "forget": args.forget_classes,
        "methods": args.method_names, **run_settings(args, recipe, budget),
        "original": sha256_file(weights) if weights is not None and weights.is_file() and seed == cfg.seed else None,
        "device": device.type, "code": code_version(), "seed": seed,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(args.cache) / "seeds" / f"{result_stem(args)}-seed{seed}-{digest}.json"


def seed_results(args: argparse.Namespace, data, seed: int, recipe, budget, device: torch.device) -> dict:
    """One seed's results: run, then kept under ``--cache``/seeds/ (written whole, then renamed), or,
    with ``--resume``, read from there when an identical earlier run finished that seed."""
    path = seed_results_path(args, data, seed, recipe, budget, device)
    if args.resume and path.is_file():
        log(f"seed {seed}: results from {path} (--resume)")
        return json.loads(path.read_text())
    out = run_seed(args, data, seed, recipe, budget, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out) + "\n")
    os.replace(tmp, path)
    return out


def _stats(values: list[float | None]) -> dict:
    """mean and std (ddof=1) of the finite values (None, NaN: not measured on that seed; "n" says
    how many counted when not all did; mean and std None when none did)."""
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": None, "std": None, "n": 0}
    out = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    return out if len(v) == len(values) else {**out, "n": int(len(v))}


def _steps_text(steps: list[int | None]) -> str:
    return "·".join(f">{RELEARN.steps}" if s is None else str(s) for s in steps)


def _steps_stats(values: list[int | None]) -> dict:
    """Steps to relearn over seeds: median (None = not within the budget counts as above it),
    min, max, and how many seeds did not relearn."""
    v = np.asarray([np.inf if x is None else x for x in values], dtype=np.float64)
    med = float(np.median(v))
    return {"median": med if np.isfinite(med) else None, "min": float(v.min()) if np.isfinite(v.min()) else None,
            "max": float(v.max()) if np.isfinite(v.max()) else None, "not_reached": int((~np.isfinite(v)).sum()),
            "values": values}


def summarise(per_seed: dict[int, dict], names: list[str]) -> dict:
    """mean and std (ddof=1) over seeds of every column (relearning steps: median, min, max);
    rank by the mean gap to retrain."""
    keys = [k for k, _, _ in METRICS] + [k for k, _, _ in RELEARN_METRICS] + [
        f"relearn_auc_k{k}" for k in RELEARN.ks] + ["time_s", "time_ratio", "gap_to_retrain", "relearn_s"] + [
        *REPRESENTATION_KEYS, *(f"gap_closed_{k}" for k, _ in GAP_CLOSED_KEYS)]
    summary = {}
    for name in ["original", *names]:
        runs = [per_seed[s][name] for s in sorted(per_seed)]
        summary[name] = {k: _stats([r[k] for r in runs]) for k in keys if all(k in r for r in runs)}
        for k in RELEARN.ks:
            key = f"relearn_steps_k{k}"
            if all(key in r for r in runs):
                summary[name][key] = _steps_stats([r[key] for r in runs])
    if REFERENCE in summary:  # the gap closed between the means over seeds (what the tables show)
        orig, ref = summary["original"], summary[REFERENCE]
        for name in ["original", *names]:
            row = summary[name]
            row["gap_closed_means"] = {
                key: _gap_closed_of_means(row[key], orig[key], ref[key])
                for key, _ in GAP_CLOSED_KEYS if all(key in x for x in (row, orig, ref))}
    ranked = sorted((n for n in names if n != REFERENCE and "gap_to_retrain" in summary[n]),
                    key=lambda n: summary[n]["gap_to_retrain"]["mean"])
    for i, n in enumerate(ranked, 1):
        summary[n]["rank"] = i
    return summary


def _gap_closed_of_means(row: dict, orig: dict, ref: dict) -> float | None:
    """gap_closed between means over seeds; None where a mean is missing or the original->retrain
    gap is within verify/representation.py's NOISE (relative above 1, as for Ratio_D): a fraction
    of a gap that small is noise."""
    m, o, r = (_nan(x["mean"]) for x in (row, orig, ref))
    if not np.isfinite([m, o, r]).all() or abs(o - r) < NOISE * max(1.0, abs(r)):
        return None
    return _num(gap_closed(m, o, r))


def _cell(stat: dict | None, decimals: int, signed: bool = False) -> str:
    if stat is None or stat.get("mean") is None:
        return "—"
    fmt = f"{{:{'+' if signed else ''}.{decimals}f}}"
    return f"{fmt.format(stat['mean'])} ± {stat['std']:.{decimals}f}"


def _steps_cell(stats: list[dict | None]) -> str:
    if any(st is None for st in stats):
        return "—"
    return " · ".join(f">{RELEARN.steps}" if st["median"] is None else f"{st['median']:g}" for st in stats)


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
        "probe AUC, MIA-efficacy and relearn AUC, per seed, then averaged; *rank* orders the methods by it "
        "(1 = closest).",
        "",
        f"*Relearning* (verify/relearn.py): the head's forgotten rows reset to a fresh seeded init, then "
        f"{RELEARN.steps} full-batch SGD steps (lr {RELEARN.lr}, no momentum, eval mode) on k held-out training "
        "samples per forgotten class (never the forget samples above) plus as many retained ones; Acc_F on "
        f"≤ {RELEARN.max_eval} forgotten-class test samples at steps {', '.join(map(str, RELEARN.eval_steps))}. "
        f"*relearn steps*: the first of those steps with Acc_F ≥ {RELEARN.target}, for k = "
        f"{' · '.join(map(str, RELEARN.ks))}, median over seeds (>{RELEARN.steps}: not within the budget; higher = "
        "harder to relearn); *relearn AUC*: mean Acc_F over the recorded steps, averaged over k (lower = "
        "harder to relearn); *passive Acc_F*: Acc_F of the model as released after "
        f"{RELEARN.steps} SGD steps on retained data only (batches of {RELEARN.passive_batch}; a masked row cannot "
        "come back this way)." if record.get("relearn") else
        "*Relearning*: not run (`--no-relearn`); its columns read — and the gap to retrain leaves it out.",
        "",
        "| method | data needed | Acc_F | Acc_R | ΔAcc_R | Ratio_D | probe AUC | MIA-efficacy "
        f"| relearn steps (k={'·'.join(map(str, RELEARN.ks))}) | relearn AUC | passive Acc_F "
        "| time (s) | time / retrain | gap to retrain | rank |",
        "| --- | --- | " + " | ".join(["---:"] * 13) + " |",
    ]
    for name in ["original", *names]:
        row = summary[name]
        data = "—" if name == "original" else REGISTRY[name].data
        cells = [_cell(row.get(k), d, signed=(k == "d_acc_r")) for k, _, d in METRICS]
        cells.append(_steps_cell([row.get(f"relearn_steps_k{k}") for k in RELEARN.ks]))
        cells += [_cell(row.get(k), d) for k, _, d in RELEARN_METRICS]
        cells += [_cell(row.get("time_s"), 2), _cell(row.get("time_ratio"), 4),
                  _cell(row.get("gap_to_retrain"), 3), str(row.get("rank", "—"))]
        lines.append(f"| {name} | {data} | " + " | ".join(cells) + " |")
    lines += ["", *representation_markdown(record)]
    lines += [
        "",
        "*data needed*: what the method reads besides the original model. *forget samples*: the "
        f"{s['forget_samples_per_class']} per class above; *retained set*: the training split without the "
        "forgotten classes. Method details: docstrings in benchmarks/methods.py.",
        "",
        f"Recipe (original and retrain): `{json.dumps(record['recipe'])}`; peer budgets: "
        f"`{json.dumps(record['budget'])}`; NHLE: `{json.dumps(record['nhle'])}`; CWM: `{json.dumps(record['cwm'])}`; "
        f"relearning: `{json.dumps(record.get('relearn'))}`.",
        "",
        "| machine | |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in record["machine"].items()],
        f"| benchmark wall time | {record['wall_s']:.0f} s |",
        "",
    ]
    return "\n".join(lines)


def _gap_closed_cell(row: dict, key: str) -> str:
    v = row.get("gap_closed_means", {}).get(key)
    return "—" if v is None else f"{v + 0.0 if round(v, 2) else 0.0:+.2f}"  # no "-0.00"


def representation_markdown(record: dict) -> list[str]:
    """The results file's representation table: LPR and CKA at both layers, and the gap closed
    (empty when the record has no representation figures: an earlier run)."""
    names, summary = record["methods"], record["summary"]
    if "lpr_f" not in summary["original"]:
        return []
    layers = record.get("layers", {})
    lines = [
        "**Representation** (verify/representation.py): *LPR_F / LPR_R*: a fresh multinomial logistic probe "
        "on standardised features of a seeded class-balanced training subset of all classes "
        "(`LPR_PER_CLASS` per class), scored on the forgotten / retained classes' test images; *CKA*: linear "
        "CKA of the model's test-split features to the original's and to the retrained model's (same seed, same "
        f"images). *head*: the head's input ({layers.get('head', 'the head input')}); *stage*: "
        f"{layers.get('stage', 'the last stage before it')}. *gap closed*: the fraction of the original→retrain "
        "gap the method closes, (original − method) / (original − retrain), on the means over seeds (1 = "
        "at retrain, 0 = where the original is, < 0 = away from retrain, > 1 = past it; — where the gap is "
        "under verify/representation.py's NOISE, 0.01, relative for Ratio_D). Where the gap is not much larger "
        "than the seeds' spread, the fraction is noise too (per-seed fractions: the .json).",
        "",
        "| method | " + " | ".join(f"{h} ({layer})" for layer in LAYERS for _, h, _ in REPRESENTATION_METRICS)
        + " | " + " | ".join(f"gap closed: {h}" for _, h in GAP_CLOSED_KEYS) + " |",
        "| --- | " + " | ".join(["---:"] * (len(LAYERS) * len(REPRESENTATION_METRICS) + len(GAP_CLOSED_KEYS))) + " |",
    ]
    for name in ["original", *names]:
        row = summary[name]
        cells = [_cell(row.get(layer_key(k, layer)), d) for layer in LAYERS for k, _, d in REPRESENTATION_METRICS]
        cells += [_gap_closed_cell(row, k) for k, _ in GAP_CLOSED_KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


README_SETTINGS = (  # (file stem, label) of the README's tables, in order
    ("digits-mlp-forget-0", "digits MLP, forget 0"), ("digits-mlp-forget-0-4", "digits MLP, forget 0, 4"),
    ("fashion-mnist-lenet-forget-0", "Fashion-MNIST LeNet, forget 0"),
    ("fashion-mnist-lenet-forget-0-4", "Fashion-MNIST LeNet, forget 0, 4"),
    ("cifar10-cnn-forget-0", "CIFAR-10 cnn, forget 0"),
)
README_METHODS = ("original", "cwm-only", "nhle-cwm", "retrain", "boundary-shrink", "kodge-projection",
                  "damp-cwm", "opc-cwm", "scrub")


def representation_table(results: Path) -> str:
    """The representation table (``--readme-table representation``, and after the relearning
    table in ``--readme-table evidence``): ΔAcc_R, LPR_F and CKA at both layers, and the gap closed,
    of ``README_METHODS`` on every setting in ``results`` whose record has them ('' when none)."""
    lines = [
        "| setting (seeds) | method | ΔAcc_R | LPR_F head | LPR_F stage | CKA to original head · stage "
        "| CKA to retrain head · stage | gap closed: LPR_F head · stage | gap closed: CKA to retrain head · stage "
        "| gap closed: Ratio_D | gap closed: relearn AUC | time / retrain |",
        "| --- | --- | " + " | ".join(["---:"] * 10) + " |",
    ]
    found = False
    for stem, label in README_SETTINGS:
        path = results / f"{stem}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        summary = record["summary"]
        if "lpr_f" not in summary["original"]:
            continue
        found, first = True, True
        for name in README_METHODS:
            row = summary.get(name)
            if row is None:
                continue

            def pair(key: str, row: dict = row) -> str:
                return " · ".join("—" if row.get(layer_key(key, layer)) is None or row[layer_key(key, layer)]["mean"]
                                  is None else f"{row[layer_key(key, layer)]['mean']:.3f}" for layer in LAYERS)

            cells = [_cell(row.get("d_acc_r"), 3, signed=True), _cell(row.get("lpr_f"), 3),
                     _cell(row.get("lpr_f_stage"), 3), pair("cka_original"), pair("cka_retrain"),
                     f"{_gap_closed_cell(row, 'lpr_f')} · {_gap_closed_cell(row, 'lpr_f_stage')}",
                     f"{_gap_closed_cell(row, 'cka_retrain')} · {_gap_closed_cell(row, 'cka_retrain_stage')}",
                     _gap_closed_cell(row, "ratio_d"), _gap_closed_cell(row, "relearn_auc"),
                     _cell(row.get("time_ratio"), 4)]
            setting = f"{label} ({record['setting']['seeds']})" if first else ""
            lines.append(f"| {setting} | {name} | " + " | ".join(cells) + " |")
            first = False
    return "\n".join(lines) if found else ""


def evidence_tables(results: Path) -> str:
    """``--readme-table evidence``: the relearning table, then (where the results have them) the
    representation table."""
    rep = representation_table(results)
    return relearn_table(results) + (f"\n\n{rep}" if rep else "")


def relearn_table(results: Path) -> str:
    """The README's evidence table (``--readme-table``): Acc_F, ΔAcc_R, Ratio_D, probe AUC and the
    relearning figures of ``README_METHODS`` on every setting found in ``results``."""
    lines = [
        f"| setting (seeds) | method | Acc_F | ΔAcc_R | Ratio_D | probe AUC | relearn steps (k={'·'.join(map(str, RELEARN.ks))}) "
        "| relearn AUC | passive Acc_F | gap to retrain (rank) |",
        "| --- | --- | " + " | ".join(["---:"] * 8) + " |",
    ]
    for stem, label in README_SETTINGS:
        record = None  # the full run, else a partial one (results/partial/: fewer seeds or methods)
        for path, note in ((results / f"{stem}.json", ""), (results / "partial" / f"{stem}.json", ", partial")):
            if path.is_file():
                rec = json.loads(path.read_text())
                if "relearn_auc" in rec["summary"]["original"]:
                    record, label = rec, label + note
                    break
        if record is None:
            continue
        summary, ranked = record["summary"], [n for n in record["methods"] if "rank" in record["summary"][n]]
        first = True
        for name in README_METHODS:
            row = summary.get(name)
            if row is None or "relearn_auc" not in row:
                continue
            gap = row.get("gap_to_retrain")
            gap_cell = "—" if name in ("original", REFERENCE) or gap is None else (
                f"{_cell(gap, 3)} ({row['rank']} of {len(ranked)})")
            cells = [_cell(row.get(k), d, signed=(k == "d_acc_r")) for k, d in
                     (("acc_f", 3), ("d_acc_r", 3), ("ratio_d", 2), ("probe_auc", 3))]
            cells += [_steps_cell([row.get(f"relearn_steps_k{k}") for k in RELEARN.ks]),
                      _cell(row["relearn_auc"], 2), _cell(row["passive_acc_f"], 3), gap_cell]
            setting = f"{label} ({record['setting']['seeds']})" if first else ""
            lines.append(f"| {setting} | {name} | " + " | ".join(cells) + " |")
            first = False
    return "\n".join(lines)


NHLE_TABLE_METHODS = {"original": "original", "nhle-cwm": "**nhle-cwm (anchored, default)**",
                      "nhle-cwm-paper": "nhle-cwm-paper", "nhle-cwm-soft-ce": "nhle-cwm-soft-ce",
                      "cwm-only": "cwm-only", "retrain": "retrain"}
RETAINED_TABLE_METHODS = {"original": "original", "nhle-cwm-retained": "**nhle-cwm-retained (8 per class)**",
                          "nhle-cwm": "nhle-cwm (default)", "nhle-cwm-paper": "nhle-cwm-paper",
                          "cwm-only": "cwm-only", "retrain": "retrain"}


def nhle_table(results: Path, methods: dict[str, str] = NHLE_TABLE_METHODS, relearn: bool = True) -> str:
    """The README's table of NHLE's variants (``--readme-table nhle``), every setting in ``results``;
    with ``RETAINED_TABLE_METHODS`` and no relearning column, the retained mode's table
    (``--readme-table retained --out benchmarks/results/retained``)."""
    metrics = (("acc_f", 3), ("d_acc_r", 3), ("ratio_d", 2), ("probe_auc", 3), ("mia_efficacy", 3),
               *((("relearn_auc", 2),) if relearn else ()))
    lines = [
        "| setting (seeds) | method | Acc_F | ΔAcc_R | Ratio_D | probe AUC | MIA-efficacy "
        + ("| relearn AUC " if relearn else "") + "| time / retrain | gap to retrain (rank) |",
        "| --- | --- | " + " | ".join(["---:"] * (len(metrics) + 2)) + " |",
    ]
    for stem, label in README_SETTINGS:
        path = results / f"{stem}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        summary = record["summary"]
        n_ranked = sum("rank" in summary[n] for n in record["methods"])
        first = True
        for name, shown in methods.items():
            row = summary.get(name)
            if row is None:
                continue
            cells = [_cell(row.get(k), d, signed=(k == "d_acc_r")) for k, d in metrics]
            cells.append(_cell(row.get("time_ratio"), 4))
            gap = _cell(row.get("gap_to_retrain"), 3)
            cells.append(gap + (f" ({row['rank']} of {n_ranked})" if "rank" in row else ""))
            setting = f"{label} ({record['setting']['seeds']})" if first else ""
            lines.append(f"| {setting} | {shown} | " + " | ".join(cells) + " |")
            first = False
    return "\n".join(lines)


def layer_names(arch: str, input_shape: tuple[int, int, int]) -> dict[str, str]:
    """What the representation columns' two layers are for ``arch``."""
    model = build_model(arch, num_classes=NUM_CLASSES, input_shape=input_shape)
    return {"head": f"the input of {find_head(model, NUM_CLASSES)[0]}", "stage": stage_layer(model)[0]}


def result_stem(args: argparse.Namespace) -> str:
    stem = f"{args.dataset}-{args.model}-forget-{'-'.join(map(str, args.forget_classes))}"
    return stem + ("-quick" if args.quick else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.readme_table:
        tables = {"evidence": evidence_tables, "representation": representation_table, "nhle": nhle_table,
                  "retained": lambda out: nhle_table(out, RETAINED_TABLE_METHODS, relearn=False)}
        print(tables[args.readme_table](Path(args.out)))
        return 0
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
    if args.pipeline_config is not None:
        recipe = args.pipeline_config.train
    budget = QUICK_BUDGET if args.quick else BUDGETS[args.dataset]
    log(f"{args.dataset} {args.model} forget {args.forget_classes}: {len(data.train)} train / "
        f"{len(data.test)} test, seeds {args.seeds}, methods {args.method_names}")
    per_seed = {seed: seed_results(args, data, seed, recipe, budget, device) for seed in range(args.seeds)}
    record = {
        "command": "python -m benchmarks.unlearning " + " ".join(argv),
        "setting": {
            "dataset": args.dataset, "model": args.model, "forget_classes": args.forget_classes,
            "seeds": args.seeds, "quick": args.quick, "config": args.config,
            "forget_samples_per_class": SAMPLES_ONE_CLASS if len(args.forget_classes) == 1 else SAMPLES_PER_CLASS_MULTI,
        },
        "methods": args.method_names,
        "data_needed": {n: REGISTRY[n].data for n in args.method_names},
        "layers": layer_names(args.model, data.input_shape),
        **run_settings(args, recipe, budget),
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
