"""Cost of a whole ``pipeline run`` at real sizes, against a floor measured in the same process.

    python -m benchmarks.scale [--cases resnet18-cifar10,imagefolder] [--sizes 2000,20000]
        [--data-root ../shared/datasets] [--work-dir benchmarks/cache/scale] [--out benchmarks/results]
        [--torchrun] [--quick]

Cases (random-init weights: the numbers are cost only, not quality):

* ``resnet18-cifar10``: resnet18 on the CIFAR-10 npz folder. Goal: wall <= 2x
  the floor. Then the same config forgetting another class with the same
  weights, where a baseline cache (``cache:``, when the config knows it) can
  serve the original's measurement. Goal: wall <= 1.2x one pass.
* ``imagefolder``: a generated folder of 224x224 JPEGs (benchmarks/datagen.py)
  with mobilenet_v3_large, at each of ``--sizes`` images. Goals: peak RSS
  <= 2 GB, and the largest size's peak within 20 % of the smallest's.
* ``--torchrun``: the first completed run again under
  ``torchrun --nproc-per-node 2``; reported as not available when it fails.

The floor is what a run cannot avoid: one onnxruntime pass (CPU, batch 256)
over the test split plus min(10,000, N_train) training images (the images
the evidence needs), with the data read the way the pipeline reads it. A run
measures two models (original and unlearned), so its floor is 2 passes; a run
served by the baseline cache, 1 pass. ratio = wall / floor.

Every run is a fresh ``python -m nhle_pipeline.pipeline run CONFIG --force``
inside a small wrapper process of its own, so ``RUSAGE_CHILDREN`` (the
largest process of the run's tree) is not mixed between runs; the wrapper
also samples ``/proc`` for the main process's and the DataLoader workers'
own peaks and the tree's total PSS. Results go to ``--out``/scale-cpu.md and
.json (``scale-cpu-quick.*`` with ``--quick``; ``scale-cuda.*`` or ``scale-auto.*`` with
``--device``, which sets the runs' device and the floor's onnxruntime provider). Not run by
the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import types
import typing
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from benchmarks.datagen import make_imagefolder, random_init_weights, split_counts

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = Path("../shared/datasets")
DEFAULT_WORK = Path("benchmarks/cache/scale")
DEFAULT_OUT = Path("benchmarks/results")
CASES = ("resnet18-cifar10", "imagefolder")
DEFAULT_SIZES = (2000, 20000)
QUICK_SIZES = (200,)
QUICK_SIZE_PX = 32
SEED = 0
NUM_CLASSES = 10
FORGET_SAMPLES = 16  # per forgotten class (fewer only where a tiny --quick folder has fewer)
OPSET = 18
FLOOR_BATCH = 256
FLOOR_MAX_TRAIN = 10_000  # = verify.evidence.PROBE_MAX_TRAIN: the training images the evidence reads
FLOOR_WORKERS = 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE, CROP = 256, 224
RUN_TIMEOUT_S = 4 * 3600
SAMPLE_EVERY_S = 0.5
MB = 1024**2
GOAL_RATIO_RUN = 2.0
GOAL_RATIO_CACHED = 1.2
GOAL_RSS_BYTES = 2 * 1024**3
GOAL_RSS_GROWTH = 0.20
# Random-init weights: the gates would judge a model that knows nothing; this
# benchmark measures cost, so they are opened wide and every run reaches release.
RELAXED_GATES = {"acc_f_max": 1.0, "acc_r_drop_max": 1.0, "parity_atol": 1.0e3}

# The measured run's wrapper: runs the command, waits for it, and reports its
# own RUSAGE_CHILDREN (this wrapper has no other child) plus /proc samples of
# the run's process tree (the DataLoader workers are grandchildren).
WRAPPER = r"""
import json, os, resource, subprocess, sys, threading, time
out_path, log_path, every, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
cmd = sys.argv[5:]

def kids_of():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        kids.setdefault(int(s[s.rindex(")") + 2:].split()[1]), []).append(int(d))
    return kids

def field_kb(path, name):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1])
    except OSError:
        pass
    return None

def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return ""

procs, peak = {}, {"tree_pss_kb": 0, "tree_rss_kb": 0, "processes": 0, "samples": 0}
timeline = []  # [seconds since start, main process RSS kB, tree PSS kB]
t0 = time.perf_counter()
done = threading.Event()

def sample(root):
    kids, tree, i = kids_of(), [root], 0
    while i < len(tree):
        tree.extend(kids.get(tree[i], []))
        i += 1
    pss = rss = main_rss = 0
    for pid in tree:
        hwm = field_kb(f"/proc/{pid}/status", "VmHWM:")
        if hwm is None:
            continue
        now_rss = field_kb(f"/proc/{pid}/status", "VmRSS:") or 0
        rss += now_rss
        main_rss = now_rss if pid == root else main_rss
        pss += field_kb(f"/proc/{pid}/smaps_rollup", "Pss:") or 0
        p = procs.setdefault(pid, {"hwm_kb": 0, "cmd": cmdline(pid), "main": pid == root})
        p["hwm_kb"] = max(p["hwm_kb"], hwm)
    peak["tree_pss_kb"] = max(peak["tree_pss_kb"], pss)
    peak["tree_rss_kb"] = max(peak["tree_rss_kb"], rss)
    peak["processes"] = max(peak["processes"], len(tree))
    peak["samples"] += 1
    timeline.append([round(time.perf_counter() - t0, 2), main_rss, pss])

def sampler(root):
    while not done.wait(every):
        sample(root)

with open(log_path, "wb") as log:
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    th = threading.Thread(target=sampler, args=(child.pid,), daemon=True)
    th.start()
    timed_out = False
    try:
        rc = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        rc, timed_out = child.wait(), True
    wall = time.perf_counter() - t0
    done.set()
    th.join()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
main = [p for p in procs.values() if p["main"]]
others = [p for p in procs.values() if not p["main"]]
with open(out_path, "w") as f:
    json.dump({
        "rc": rc, "timed_out": timed_out, "wall_s": wall,
        "ru_maxrss_kb": ru.ru_maxrss, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
        "main_hwm_kb": main[0]["hwm_kb"] if main else None,
        "workers": [{"hwm_kb": p["hwm_kb"], "cmd": p["cmd"]} for p in others],
        **peak, "timeline": timeline,
    }, f)
"""


# ---------------------------------------------------------------------------- config


def _section_model(annotation):
    """The pydantic model inside a field's annotation (``X``, ``X | None``), or None."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _section_model(arg)
            if found is not None:
                return found
    return None


def prune_unknown(data: dict, model_cls, prefix: str = "") -> tuple[dict, list[str]]:
    """``data`` without the keys the installed config model does not know; returns (kept, dropped paths)."""
    fields = model_cls.model_fields
    kept, dropped = {}, []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            dropped.append(path)
            continue
        sub = _section_model(fields[key].annotation)
        if sub is not None and isinstance(value, dict):
            value, more = prune_unknown(value, sub, path + ".")
            dropped += more
        kept[key] = value
    return kept, dropped


def config_knows(path: str) -> bool:
    """Does the installed ``Config`` have the dotted key ``path`` (e.g. ``data.transform``)?"""
    from nhle_pipeline.pipeline.config import Config

    cls = Config
    for key in path.split("."):
        if cls is None or key not in cls.model_fields:
            return False
        cls = _section_model(cls.model_fields[key].annotation)
    return True


def write_config(path: Path, data: dict) -> tuple[list[str], str | None]:
    """Prune unknown keys, validate with the installed config, write YAML; returns (dropped, error)."""
    import yaml

    from nhle_pipeline.pipeline.config import Config, parse_config
    from nhle_pipeline.pipeline.errors import ConfigError

    kept, dropped = prune_unknown(data, Config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(kept, sort_keys=False))
    try:
        parse_config(kept, str(path))
    except ConfigError as e:
        return dropped, str(e)
    return dropped, None


def base_config(
    work: Path, name: str, arch: str, weights: Path, data: dict, forget: list[int],
    samples_per_class: int = FORGET_SAMPLES, device: str = "cpu",
) -> dict:
    return {
        "seed": SEED,
        "device": device,
        "model": {"arch": arch, "weights": str(weights), "num_classes": NUM_CLASSES},
        "data": data,
        "forget": {"classes": forget, "samples_per_class": samples_per_class},
        "verify": {"gates": dict(RELAXED_GATES)},
        "release": {"dir": str(work / "releases"), "name": name},
    }


# ---------------------------------------------------------------------------- floor


@dataclass
class Floor:
    images: int  # per pass: test + training subset
    n_test: int
    n_train: int
    export_s: float
    session_s: float
    pass_s: float  # data reading + onnxruntime, one model
    provider: str

    @property
    def run_s(self) -> float:  # original + unlearned
        return 2 * self.pass_s

    @property
    def cached_s(self) -> float:  # the unlearned model only
        return self.pass_s


def train_subset(n: int, seed: int = SEED) -> np.ndarray:
    """Sorted seeded subset of range(n), at most FLOOR_MAX_TRAIN (as verify.evidence.subsample)."""
    if n <= FLOOR_MAX_TRAIN:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, FLOOR_MAX_TRAIN, replace=False))


def _session(model, input_shape, onnx_path: Path, device: str) -> tuple[object, str, float, float]:
    from nhle_pipeline.export.onnx_export import export_onnx
    from nhle_pipeline.verify.ort import open_session

    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    export_onnx(model, input_shape, onnx_path, opset=OPSET)
    t1 = time.perf_counter()
    sess, provider = open_session(onnx_path, device)
    return sess, provider, t1 - t0, time.perf_counter() - t1


def floor_npz(model, input_shape, folder: Path, onnx_path: Path, device: str = "cpu") -> Floor:
    """One pass over test + the training subset, uint8 NHWC -> float32 NCHW / 255 per batch."""
    sess, provider, export_s, session_s = _session(model, input_shape, onnx_path, device)
    name = sess.get_inputs()[0].name

    def run(x_u8: np.ndarray) -> None:
        for i in range(0, len(x_u8), FLOOR_BATCH):
            xb = x_u8[i : i + FLOOR_BATCH].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
            sess.run(None, {name: np.ascontiguousarray(xb)})

    t0 = time.perf_counter()
    with np.load(folder / "test.npz") as z:
        x_test = z["x"]
    run(x_test)
    with np.load(folder / "train.npz") as z:
        x_train = z["x"]
    idx = train_subset(len(x_train))
    run(x_train[idx])
    pass_s = time.perf_counter() - t0
    return Floor(len(x_test) + len(idx), len(x_test), len(idx), export_s, session_s, pass_s, provider)


class _Images:
    """Decode + transform one JPEG per item (a torch Dataset; module level so workers can pickle it)."""

    def __init__(self, paths: list[str], preset: str | None) -> None:
        self.paths = paths
        self.preset = preset

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torchvision.transforms.functional as F
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            img = im.convert("RGB")
        if self.preset == "imagenet":
            img = F.center_crop(F.resize(img, RESIZE), CROP)
            return F.normalize(F.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)
        return F.to_tensor(img)


def imagefolder_files(root: Path, split: str) -> list[str]:
    """Files in ImageFolder order: sorted class folders, sorted files."""
    out: list[str] = []
    for cls in sorted(p for p in (root / split).iterdir() if p.is_dir()):
        out += sorted(str(p) for p in cls.iterdir() if p.suffix == ".jpg")
    return out


def floor_imagefolder(model, input_shape, root: Path, preset: str | None, onnx_path: Path,
                      device: str = "cpu") -> Floor:
    """One pass over test + the training subset: decode, resize 256, crop 224, normalise, 2 workers."""
    from torch.utils.data import DataLoader

    sess, provider, export_s, session_s = _session(model, input_shape, onnx_path, device)
    name = sess.get_inputs()[0].name
    test = imagefolder_files(root, "test")
    train = imagefolder_files(root, "train")
    idx = train_subset(len(train))
    paths = test + [train[i] for i in idx]
    t0 = time.perf_counter()
    loader = DataLoader(_Images(paths, preset), batch_size=FLOOR_BATCH, num_workers=FLOOR_WORKERS, shuffle=False)
    for xb in loader:
        sess.run(None, {name: xb.numpy()})
    pass_s = time.perf_counter() - t0
    return Floor(len(paths), len(test), len(idx), export_s, session_s, pass_s, provider)


# ---------------------------------------------------------------------------- runs


@dataclass
class Run:
    case: str
    label: str  # what this run is: "1 process", "cached baseline", "2000 images", ...
    config: str
    floor_kind: str  # "run" (2 passes) or "cached" (1 pass)
    floor_s: float | None
    goal: str
    rc: int | None = None
    wall_s: float | None = None
    ratio: float | None = None
    peak_rss_bytes: int | None = None  # RUSAGE_CHILDREN of the wrapper: the largest process of the tree
    main_hwm_bytes: int | None = None
    workers_hwm_bytes: list[int] = field(default_factory=list)
    tree_pss_peak_bytes: int | None = None
    # When the main process's sampled RSS peaked, and in which stage (stage starts estimated from the
    # manifest's timings, counted back from the end of the run: interpreter start and imports come first).
    rss_peak_at_s: float | None = None
    rss_peak_stage: str | None = None
    timeline: list = field(default_factory=list)  # [s, main RSS kB, tree PSS kB] every SAMPLE_EVERY_S
    user_s: float | None = None
    sys_s: float | None = None
    timings_s: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    manifest: str | None = None
    status: str = "not run"
    log: str | None = None
    dropped_keys: list[str] = field(default_factory=list)
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)


def find_manifest(release_dir: Path, name: str) -> Path | None:
    """The release's manifest, or the newest staging one (a run whose gates failed)."""
    released = release_dir / name / "manifest.json"
    if released.is_file():
        return released
    staged = sorted((release_dir / ".staging").glob(f"{name}-*/manifest.json"), key=lambda p: p.stat().st_mtime)
    return staged[-1] if staged else None


def measured_run(cmd: list[str], out_json: Path, log: Path) -> dict:
    """Run ``cmd`` in its own wrapper process; the wrapper's report (wall, rusage, /proc peaks)."""
    out_json.unlink(missing_ok=True)
    wrapper = [sys.executable, "-c", WRAPPER, str(out_json), str(log), str(SAMPLE_EVERY_S), str(RUN_TIMEOUT_S)]
    subprocess.run(wrapper + cmd, cwd=REPO, check=False)
    if not out_json.is_file():
        return {"rc": None, "error": "the wrapper wrote no report"}
    return json.loads(out_json.read_text())


def execute(run: Run, cmd: list[str], release_dir: Path, release_name: str, work: Path) -> Run:
    stem = Path(run.config).stem
    log = work / "logs" / f"{stem}{'-torchrun' if 'torch.distributed.run' in cmd else ''}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    run.log = str(log)
    run.load_before = list(os.getloadavg())
    rep = measured_run(cmd, work / "logs" / f"{log.stem}.rusage.json", log)
    run.load_after = list(os.getloadavg())
    run.rc = rep.get("rc")
    run.wall_s = rep.get("wall_s")
    if rep.get("ru_maxrss_kb") is not None:
        run.peak_rss_bytes = rep["ru_maxrss_kb"] * 1024
        run.main_hwm_bytes = (rep.get("main_hwm_kb") or 0) * 1024 or None
        run.workers_hwm_bytes = sorted((w["hwm_kb"] * 1024 for w in rep.get("workers", [])), reverse=True)
        run.tree_pss_peak_bytes = rep.get("tree_pss_kb", 0) * 1024 or None
        run.user_s, run.sys_s = rep.get("user_s"), rep.get("sys_s")
    if run.wall_s is not None and run.floor_s:
        run.ratio = run.wall_s / run.floor_s
    man = find_manifest(release_dir, release_name) if run.rc in (0, 1) else None
    if man is not None:
        doc = json.loads(man.read_text())
        run.manifest = str(man)
        run.timings_s = doc.get("timings_s", {})
        run.metrics = doc.get("metrics", {})
    run.timeline = rep.get("timeline", [])
    peak_rss_stage(run)
    run.status = {0: "released", 1: "gate failed (cost still measured)"}.get(run.rc, f"failed (exit {run.rc})")
    if rep.get("timed_out"):
        run.status = f"timed out after {RUN_TIMEOUT_S}s"
    if run.rc not in (0, 1):
        run.status += f": {last_lines(log)}"
    return run


def peak_rss_stage(run: Run) -> None:
    """Set when the main RSS peaked, and the stage that was running then (approximately)."""
    if not run.timeline:
        return
    t_peak = max(run.timeline, key=lambda row: row[1])[0]
    run.rss_peak_at_s = t_peak
    if not run.timings_s or run.wall_s is None:
        return
    start = run.wall_s - sum(run.timings_s.values())  # imports before, release/exit after: both small
    run.rss_peak_stage = "start-up"
    for stage, seconds in run.timings_s.items():
        if t_peak >= start:
            run.rss_peak_stage = stage
        start += seconds
    if t_peak >= start:
        run.rss_peak_stage = "release/exit"


def last_lines(log: Path, n: int = 2) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return " / ".join(lines[-n:])[:400]


def pipeline_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "nhle_pipeline.pipeline", "run", str(config), "--force"]


def torchrun_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "-m", "nhle_pipeline.pipeline", "run", str(config), "--force"]


# ---------------------------------------------------------------------------- printing


def mb(n: int | None) -> str:
    return "-" if n is None else f"{n / MB:.0f}"


def num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def scalar_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, bool)) or v is None}


def print_run(r: Run) -> None:
    workers = f", workers max {mb(max(r.workers_hwm_bytes))} MB x{len(r.workers_hwm_bytes)}" if r.workers_hwm_bytes else ""
    print(f"  [{r.label}] {r.status}: wall {num(r.wall_s)}s, floor ({r.floor_kind}) {num(r.floor_s)}s, "
          f"ratio {num(r.ratio, '.2f')} (goal {r.goal}); peak RSS {mb(r.peak_rss_bytes)} MB "
          f"(main {mb(r.main_hwm_bytes)} MB{workers}; tree PSS peak {mb(r.tree_pss_peak_bytes)} MB; "
          f"main RSS peaked at {num(r.rss_peak_at_s)}s, stage {r.rss_peak_stage or '-'})", flush=True)
    if r.timings_s:
        print("    stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in r.timings_s.items()), flush=True)
    if r.metrics:
        print("    metrics: " + ", ".join(f"{k} {v}" for k, v in scalar_metrics(r.metrics).items()), flush=True)


# ---------------------------------------------------------------------------- cases


@dataclass
class CaseResult:
    case: str
    data: str
    arch: str
    input_shape: list[int]
    floor: dict | None = None
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    goals: dict = field(default_factory=dict)


def _model(arch: str, input_shape: tuple[int, int, int], weights: Path):
    from nhle_pipeline.pipeline.checkpoint import load_weights
    from nhle_pipeline.pipeline.models import build_model

    model = build_model(arch, num_classes=NUM_CLASSES, input_shape=input_shape, kwargs={})
    load_weights(model, weights)
    return model.eval()


def _weights(work: Path, arch: str, input_shape: tuple[int, int, int]) -> Path:
    path = work / "weights" / f"{arch}-{'x'.join(map(str, input_shape))}-seed{SEED}.safetensors"
    if not path.is_file():
        random_init_weights(arch, NUM_CLASSES, input_shape, path, SEED)
    return path


def _print_floor(fl: Floor) -> None:
    print(f"  floor: {fl.images} images ({fl.n_test} test + {fl.n_train} train) in {fl.pass_s:.1f}s per pass "
          f"({fl.images / fl.pass_s:.0f} img/s, {fl.provider}); export {fl.export_s:.1f}s, "
          f"session {fl.session_s:.1f}s (outside the floor)", flush=True)


def case_cifar(args, work: Path) -> CaseResult:
    arch = "cnn" if args.quick else "resnet18"
    folder = (args.data_root / "cifar10").resolve()
    res = CaseResult("resnet18-cifar10", str(folder), arch, [3, 32, 32])
    print(f"\n== {res.case}: {arch} (random init) on {folder}", flush=True)
    if not (folder / "train.npz").is_file() or not (folder / "test.npz").is_file():
        res.notes.append(f"not run: {folder} has no train.npz/test.npz")
        print(f"  {res.notes[-1]}")
        return res
    shape = (3, 32, 32)
    weights = _weights(work, arch, shape)
    fl = floor_npz(_model(arch, shape, weights), shape, folder, work / "floor" / f"{arch}-cifar10.onnx", args.device)
    res.floor = {**asdict(fl), "run_s": fl.run_s, "cached_s": fl.cached_s}
    _print_floor(fl)
    data = {"dataset": "npz", "root": str(folder)}
    release_dir = work / "releases"
    cache = fresh_cache(work, res.case)
    if not config_knows("cache"):
        res.notes.append("the installed config has no `cache` section: the second run recomputes the baseline")
    plan = (("1 process, forget [0]", [0], "run", GOAL_RATIO_RUN),
            ("second run, forget [1]", [1], "cached", GOAL_RATIO_CACHED))
    goals = [g for *_, g in plan]
    for label, forget, kind, goal_ratio in plan:
        name = res.case if kind == "run" else f"{res.case}-cached"
        cfg = base_config(work, name, arch, weights, data, forget, device=args.device)
        cfg["cache"] = dict(cache)  # the same for both runs: the first fills it
        cfg_path = work / "configs" / f"{name}.yaml"
        dropped, error = write_config(cfg_path, cfg)
        floor_s = fl.run_s if kind == "run" else fl.cached_s
        run = Run(res.case, label, str(cfg_path), kind, floor_s, f"<= {goal_ratio}x", dropped_keys=dropped)
        if error:
            run.status = f"config rejected: {error}"
        else:
            execute(run, pipeline_cmd(cfg_path), release_dir, name, work)
        res.runs.append(run)
        res.goals[label] = None if run.ratio is None else run.ratio <= goal_ratio
        print_run(run)
    if args.floor_after and any(r.wall_s is not None for r in res.runs):
        after = floor_npz(_model(arch, shape, weights), shape, folder, work / "floor" / f"{arch}-cifar10.onnx",
                          args.device)
        res.floor = refloor(res.floor, after, res.runs)
        res.goals = {r.label: None if r.ratio is None else r.ratio <= g for r, g in zip(res.runs, goals, strict=True)}
    if dropped := sorted({k for r in res.runs for k in r.dropped_keys}):
        res.notes.append(f"keys the installed config does not know, left out: {', '.join(dropped)}")
    return res


def refloor(floor: dict, after: Floor, runs: list[Run]) -> dict:
    """Add the floor measured after the runs; every ratio uses the lower pass (load only adds time)."""
    floor = {**floor, "pass_s_before": floor["pass_s"], "pass_s_after": after.pass_s}
    best = min(floor["pass_s_before"], after.pass_s)
    floor.update(pass_s=best, run_s=2 * best, cached_s=best)
    print(f"  floor again after the runs: {after.pass_s:.1f}s per pass (before: {floor['pass_s_before']:.1f}s); "
          f"ratios use {best:.1f}s", flush=True)
    for r in runs:
        r.floor_s = floor["run_s"] if r.floor_kind == "run" else floor["cached_s"]
        if r.wall_s is not None:
            r.ratio = r.wall_s / r.floor_s
            print(f"    [{r.label}] wall {r.wall_s:.1f}s / floor ({r.floor_kind}) {r.floor_s:.1f}s = {r.ratio:.2f}",
                  flush=True)
    return floor


def case_imagefolder(args, work: Path) -> CaseResult:
    arch = "cnn" if args.quick else "mobilenet_v3_large"
    px = QUICK_SIZE_PX if args.quick else CROP
    shape = (3, px, px)
    res = CaseResult("imagefolder", str(work / "data"), arch, list(shape))
    print(f"\n== {res.case}: {arch} (random init), generated {px}x{px} JPEGs, sizes {args.sizes}", flush=True)
    weights = _weights(work, arch, shape)
    preset = None if args.quick else "imagenet"
    transform_ok = preset is None or config_knows("data.transform")
    if not transform_ok:
        res.notes.append("the installed config has no `data.transform`: the imagefolder runs were not started "
                         "(a 224 px pipeline needs the imagenet preset); floors only")
    release_dir = work / "releases"
    floors = {}
    for n in args.sizes:
        root = work / "data" / f"imagefolder-{n}-{px}px"
        t0 = time.perf_counter()
        make_imagefolder(root, n, size=px, classes=NUM_CLASSES, seed=SEED)
        print(f"  data: {root} ({n} images, ready in {time.perf_counter() - t0:.1f}s)", flush=True)
        fl = floor_imagefolder(_model(arch, shape, weights), shape, root, preset,
                               work / "floor" / f"{arch}-{px}px.onnx", args.device)
        floors[n] = {**asdict(fl), "run_s": fl.run_s, "cached_s": fl.cached_s}
        _print_floor(fl)
        name = f"imagefolder-{n}"
        data = {"dataset": "imagefolder", "root": str(root), "workers": 2}
        if preset:
            data["transform"] = {"preset": preset}
        cfg_path = work / "configs" / f"{name}.yaml"
        per_class = min(FORGET_SAMPLES, min(n_train for n_train, _ in split_counts(n, NUM_CLASSES)))
        cfg = base_config(work, name, arch, weights, data, [0], per_class, device=args.device)
        cfg["cache"] = fresh_cache(work, name)  # cold: nothing from an earlier invocation serves it
        dropped, error = write_config(cfg_path, cfg)
        run = Run(res.case, f"{n} images", str(cfg_path), "run", fl.run_s,
                  f"peak RSS <= {GOAL_RSS_BYTES / MB:.0f} MB", dropped_keys=dropped)
        if not transform_ok:
            run.status = "not run: the installed config has no data.transform"
        elif error:
            run.status = f"config rejected: {error}"
        else:
            execute(run, pipeline_cmd(cfg_path), release_dir, name, work)
        res.runs.append(run)
        if args.floor_after and run.wall_s is not None:
            after = floor_imagefolder(_model(arch, shape, weights), shape, root, preset,
                                      work / "floor" / f"{arch}-{px}px.onnx", args.device)
            floors[n] = refloor(floors[n], after, [run])
        print_run(run)
    res.floor = floors
    peaks = {r.label: r.peak_rss_bytes for r in res.runs if r.rc == 0 or r.rc == 1}
    for r in res.runs:
        if r.peak_rss_bytes is not None:
            res.goals[f"{r.label}: peak RSS <= 2 GB"] = r.peak_rss_bytes <= GOAL_RSS_BYTES
    if len(peaks) >= 2 and all(v for v in peaks.values()):
        small, large = res.runs[0].peak_rss_bytes, res.runs[-1].peak_rss_bytes
        if small and large:
            growth = large / small - 1
            res.goals["largest within 20 % of smallest"] = growth <= GOAL_RSS_GROWTH
            res.notes.append(f"peak RSS growth {res.runs[0].label} -> {res.runs[-1].label}: {growth:+.1%}")
    if dropped := sorted({k for r in res.runs for k in r.dropped_keys}):
        res.notes.append(f"keys the installed config does not know, left out: {', '.join(dropped)}")
    return res


def case_torchrun(results: list[CaseResult], work: Path) -> CaseResult:
    res = CaseResult("torchrun", "", "", [])
    base = next((r for c in results for r in c.runs if r.rc == 0 and r.floor_kind == "run"), None)
    print("\n== torchrun: 1 vs 2 processes", flush=True)
    if base is None:
        res.notes.append("no completed 1-process run to compare with")
        print(f"  {res.notes[-1]}")
        return res
    cfg = Path(base.config)
    name = cfg.stem
    run = Run("torchrun", f"2 processes ({base.case}, {base.label})", str(cfg), "run", base.floor_s,
              f"vs 1 process {num(base.wall_s)}s")
    execute(run, torchrun_cmd(cfg), work / "releases", name, work)
    if run.rc != 0:
        res.notes.append(f"torchrun --nproc-per-node 2 is not available: {last_lines(Path(run.log or ''))}")
        print(f"  not available: {res.notes[-1]}", flush=True)
    elif base.wall_s:
        res.notes.append(f"2 processes / 1 process wall: {run.wall_s / base.wall_s:.2f}")
    res.runs.append(run)
    print_run(run)
    return res


# ---------------------------------------------------------------------------- environment and output


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def fresh_cache(work: Path, case: str) -> dict:
    """A ``cache:`` section pointing at an emptied folder: the first run of a case starts cold."""
    folder = work / "baseline-cache" / case
    shutil.rmtree(folder, ignore_errors=True)
    return {"dir": str(folder)}


def environment(argv: list[str]) -> dict:
    import torch

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = "unknown"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = None
    try:
        mem = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        pass

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    return {
        "command": "python -m benchmarks.scale " + " ".join(argv),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
                    "cpus_usable": len(os.sched_getaffinity(0)), "memory_bytes": mem,
                    "loadavg_start": list(os.getloadavg())},
        "versions": {"python": platform.python_version(), "nhle-pipeline": version("nhle-pipeline"),
                     "torch": torch.__version__, "torchvision": version("torchvision"),
                     "onnxruntime": ort_version(), "numpy": np.__version__, "pillow": version("pillow")},
        "torch_threads": torch.get_num_threads(),
        "git": {"commit": git("rev-parse", "HEAD"),
                "uncommitted_in_pipeline_verify_export": len(
                    git("status", "--porcelain", "--", "pipeline", "verify", "export").splitlines())},
    }


def to_json(env: dict, results: list[CaseResult], notes: list[str]) -> dict:
    return {**env, "notes": notes, "cases": [asdict(c) for c in results]}


def to_markdown(env: dict, results: list[CaseResult], notes: list[str]) -> str:
    m, v = env["machine"], env["versions"]
    lines = [
        "# Scale benchmark (CPU)",
        "",
        f"`{env['command']}` ({env['date_utc']} UTC)",
        "",
        f"- machine: {m['cpu']}, {m['cpus_usable']} usable of {m['cpus']} CPUs, "
        f"{(m['memory_bytes'] or 0) / 1024**3:.0f} GiB RAM, {m['platform']}",
        f"- load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, "
        f"at end {', '.join(f'{x:.2f}' for x in env.get('loadavg_end', []))}; "
        "a shared machine: other work ran alongside, so timings carry its noise",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- torch threads {env['torch_threads']} (defaults left as they are); git {env['git']['commit'][:12]}, "
        f"{env['git']['uncommitted_in_pipeline_verify_export']} uncommitted paths in pipeline/ verify/ export/ "
        "(the code measured is the working tree)",
        "- weights: random init (cost only); gates relaxed to "
        + ", ".join(f"{k} {val}" for k, val in RELAXED_GATES.items()) + " so that every run reaches release",
        f"- floor: one onnxruntime pass (CPU, batch {FLOOR_BATCH}) over the test split + min({FLOOR_MAX_TRAIN:,}, "
        "N_train) training images, data read as the pipeline reads it, measured before and after the runs "
        "(the lower counts: background load only adds time); a run's floor is 2 passes (original + "
        "unlearned), a cached run's 1 pass; ratio = wall / floor. Wall: the whole `pipeline run` process "
        "(interpreter start and imports included).",
        "- peak RSS: RUSAGE_CHILDREN max RSS of a wrapper that ran only this run (the largest single process of "
        "its tree); main/workers: each process's VmHWM sampled from /proc every "
        f"{SAMPLE_EVERY_S}s; tree PSS: the largest sampled sum of PSS over the run's processes",
        "",
        "## Runs",
        "",
        "| case | run | status | wall (s) | floor (s) | ratio | goal | peak RSS (MB) | main (MB) "
        "| workers max (MB) | tree PSS peak (MB) | main RSS peaked in |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for c in results:
        for r in c.runs:
            wk = f"{mb(max(r.workers_hwm_bytes))} x{len(r.workers_hwm_bytes)}" if r.workers_hwm_bytes else "-"
            lines.append(f"| {c.case} | {r.label} | {r.status.replace('|', '/')} | {num(r.wall_s)} | "
                         f"{num(r.floor_s)} ({r.floor_kind}) | {num(r.ratio, '.2f')} | {r.goal} | "
                         f"{mb(r.peak_rss_bytes)} | {mb(r.main_hwm_bytes)} | {wk} | {mb(r.tree_pss_peak_bytes)} | "
                         f"{r.rss_peak_stage or '-'} ({num(r.rss_peak_at_s)}s) |")
    lines += ["", "## Goals", ""]
    for c in results:
        for goal, met in c.goals.items():
            lines.append(f"- {c.case}, {goal}: {'met' if met else 'not met' if met is not None else 'not measured'}")
    lines += ["", "## Floors", "",
              "| case | images per pass | pass (s) | before / after the runs (s) | img/s | export (s) | session (s) "
              "| provider |",
              "|---|---:|---:|---|---:|---:|---:|---|"]
    for c in results:
        floors = c.floor if isinstance(c.floor, dict) and "pass_s" not in c.floor else {"": c.floor}
        for size, fl in (floors or {}).items():
            if not fl:
                continue
            label = f"{c.case} {size}".strip()
            lines.append(f"| {label} | {fl['images']} ({fl['n_test']} test + {fl['n_train']} train) | "
                         f"{fl['pass_s']:.1f} | {num(fl.get('pass_s_before', fl['pass_s']))} / "
                         f"{num(fl.get('pass_s_after'))} | {fl['images'] / fl['pass_s']:.0f} | {fl['export_s']:.1f} | "
                         f"{fl['session_s']:.1f} | {fl['provider']} |")
    stages = sorted({k for c in results for r in c.runs for k in r.timings_s},
                    key=lambda k: ["load", "baseline", "nhle", "cwm", "export", "reference", "verify",
                                   "release"].index(k) if k in ("load", "baseline", "nhle", "cwm", "export",
                                                                "reference", "verify", "release") else 99)
    if stages:
        lines += ["", "## Stage timings (manifest `timings_s`, seconds)", "",
                  "| case | run | " + " | ".join(stages) + " | sum | wall - sum |",
                  "|---|---|" + "---:|" * (len(stages) + 2)]
        for c in results:
            for r in c.runs:
                if r.timings_s:
                    total = sum(r.timings_s.values())
                    cells = " | ".join(num(r.timings_s.get(s)) for s in stages)
                    lines.append(f"| {c.case} | {r.label} | {cells} | {total:.1f} | {num((r.wall_s or 0) - total)} |")
    metric_rows = [(c.case, r.label, scalar_metrics(r.metrics)) for c in results for r in c.runs if r.metrics]
    if metric_rows:
        lines += ["", "## Metrics (random weights: for the record only)", ""]
        for case, label, ms in metric_rows:
            lines.append(f"- {case}, {label}: " + ", ".join(f"{k} {val}" for k, val in ms.items()))
    all_notes = notes + [f"{c.case}: {n}" for c in results for n in c.notes]
    if all_notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in all_notes]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=None,
                    help=f"comma-separated, of {', '.join(CASES)} (default both; imagefolder with --quick)")
    ap.add_argument("--sizes", default=None, help="imagefolder sizes, comma-separated (default 2000,20000)")
    ap.add_argument("--data-root", type=Path, default=None, help="folder holding cifar10/ (default ../shared/datasets)")
    ap.add_argument("--work-dir", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--device", choices=("cpu", "auto", "cuda"), default="cpu",
                    help="the runs' `device` and the floor's onnxruntime provider (auto: CUDA where usable)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--torchrun", action="store_true", help="also run the first case with torchrun, 2 processes")
    ap.add_argument("--quick", action="store_true", help="tiny: cnn, 200 images at 32 px")
    ap.add_argument("--no-floor-after", dest="floor_after", action="store_false",
                    help="measure each floor once, before the runs (default: before and after, the lower counts)")
    args = ap.parse_args(argv)
    if args.cases is None:
        args.cases = "imagefolder" if args.quick else ",".join(CASES)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        ap.error(f"--cases: unknown {unknown}; expected some of {list(CASES)}")
    if args.sizes is not None:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    else:
        args.sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.data_root is None:
        args.data_root = (REPO / DEFAULT_DATA_ROOT).resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = environment(argv)
    print(f"machine: {env['machine']['cpu']}, {env['machine']['cpus_usable']} CPUs, load "
          f"{env['machine']['loadavg_start']}; torch threads {env['torch_threads']}", flush=True)
    notes: list[str] = []
    results: list[CaseResult] = []
    for case in args.cases:
        results.append(case_cifar(args, work) if case == "resnet18-cifar10" else case_imagefolder(args, work))
    if args.torchrun:
        results.append(case_torchrun(results, work))
    env["loadavg_end"] = list(os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"scale-{args.device}" + ("-quick" if args.quick else "")  # scale-cpu[-quick] by default
    (args.out / f"{stem}.json").write_text(json.dumps(to_json(env, results, notes), indent=1, default=str) + "\n")
    (args.out / f"{stem}.md").write_text(to_markdown(env, results, notes))
    print(f"\nwrote {args.out / stem}.md and .json", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
