"""Which onnxruntime loads a release: the exporter's IR 10 file against `export.ir_version: 9` (and 8).

    python3 -m venv /tmp/ort117 && /tmp/ort117/bin/pip install onnxruntime==1.17.3 'numpy<2'
    python -m benchmarks.ort_compat --python /tmp/ort117/bin/python
    python -m benchmarks.ort_compat --python /tmp/ort117/bin/python --python /tmp/ort1163/bin/python \\
        --settings digits-mlp,fashion-mnist-lenet --data-root ../shared/datasets

For each setting (digits MLP; Fashion-MNIST LeNet and CIFAR-10 cnn with --data-root), the
original model (benchmarks/common.py's cache) is released three times by `pipeline run`
(in-process, default config, forget class 0): with the exporter's IR (10), with
`export.ir_version: 9` and with 8; the IR 9 release is then derived by `pipeline quantize` in
each mode (int8-dynamic, int8-static, fp16; a derivative its gates refuse is taken from its
staging folder: the question here is whether a server loads it). Every model.onnx is run on
the first 256 test images by this environment's onnxruntime and, in a child process, by each
``--python`` interpreter's (it needs only onnxruntime and numpy): loaded or refused (and why),
and the largest |Δlogit| against this environment's logits of the same file. The Triton copy
is byte-identical to model.onnx (manifest checksums), so it is not loaded separately. Then a
sweep: a seeded conv net exported at every opset the exporter takes (18-23), with each
`export.ir_version` that carries it, run the same way: the oldest onnxruntime for each
(opset, IR), as docs/serving.md gives it.

Not a test: the other interpreters come from PyPI and the suite uses no network. Writes
``ort-compat.md`` to ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.common import RECIPES, cached_original, load_benchmark_data, machine_facts

SETTINGS = {"digits-mlp": ("digits", "mlp"), "fashion-mnist-lenet": ("fashion-mnist", "lenet"),
            "cifar10-cnn": ("cifar10", "cnn")}
IR_SETTINGS = (None, 9, 8)  # export.ir_version of each release (None: the exporter's own)
DERIVED_FROM = 9  # the release `pipeline quantize` derives from
MODES = ("int8-dynamic", "int8-static", "fp16")
IMAGES = 256  # the first test images
BATCH = 64
ATOL = 1e-5  # same logits: the largest |Δlogit| between two onnxruntime versions on one file
CHILD_TIMEOUT_S = 600
SWEEP_ARCH, SWEEP_INPUT, SWEEP_IMAGES = "cnn", (3, 32, 32), 16

# Run by each --python interpreter: only onnxruntime and numpy (any version) are imported.
CHILD = r'''
import json, sys
import numpy as np
import onnxruntime as ort

job = json.load(open(sys.argv[1]))
x = np.load(job["images"])
out = {"onnxruntime": ort.__version__, "numpy": np.__version__, "python": sys.version.split()[0], "files": {}}
logits = {}
for key, path in job["files"].items():
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        logits[key] = np.concatenate([sess.run(None, {name: x[i:i + job["batch"]]})[0]
                                      for i in range(0, len(x), job["batch"])])
        out["files"][key] = {"loaded": True}
    except Exception as e:  # refused at load (IR, opset, a missing kernel) or at run
        out["files"][key] = {"loaded": False, "error": str(e)}
np.savez(job["logits"], **logits)
json.dump(out, open(job["result"], "w"))
'''

# What onnxruntime says, without its source paths and C++ signatures.
_REASONS = (r"Unsupported model IR version: \d+, max supported IR version: \d+",
            r"Current official support for domain [\w.]+ is till opset \d+",
            r"Could not find an implementation for \w+\(\d+\) node")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ort_compat", description=__doc__.splitlines()[0])
    ap.add_argument("--python", action="append", required=True, metavar="INTERPRETER",
                    help="a Python with another onnxruntime installed (repeat for several)")
    ap.add_argument("--settings", default="digits-mlp", help=f"comma-separated, from {list(SETTINGS)}")
    ap.add_argument("--data-root", default=None, help="folder holding fashion-mnist/ and cifar10/ (npz)")
    ap.add_argument("--cache", default="benchmarks/cache", help="where original models are cached")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    args.setting_names = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in args.setting_names:
        if s not in SETTINGS:
            ap.error(f"--settings: unknown '{s}'; expected {list(SETTINGS)}")
    for p in args.python:
        if not Path(p).is_file():
            ap.error(f"--python: no such interpreter '{p}'")
    return args


def log(msg: str) -> None:
    print(f"[ort-compat] {msg}", file=sys.stderr, flush=True)


def reason(error: str) -> str:
    for pattern in _REASONS:
        m = re.search(pattern, error)
        if m:
            return m.group(0)
    return " ".join(error.split())[-160:]


def _config(dataset: str, arch: str, weights: str, data_root: str | None, work: Path, ir: int | None) -> Path:
    data = {"dataset": "digits"}
    if dataset != "digits":
        root = Path(data_root)
        data = {"dataset": "npz", "root": str(root / dataset if (root / dataset).is_dir() else root)}
    name = f"{dataset}-{arch}-ir{ir or 'default'}"
    cfg = {
        "seed": 0, "device": "cpu",
        "model": {"arch": arch, "weights": weights, "num_classes": 10},
        "data": data,
        "forget": {"classes": [0], "samples_per_class": 16},
        "release": {"dir": str(work / "releases"), "name": name},
        "cache": {"dir": str(work / "cache")},  # the original's measurements: once for the three runs
    }
    if ir is not None:
        cfg["export"] = {"ir_version": ir}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def release_files(name: str, args: argparse.Namespace, work: Path) -> tuple[dict[str, Path], np.ndarray]:
    """{label: model.onnx} of one setting's releases and derivatives, and its test images."""
    from nhle_pipeline.pipeline.config import load_config
    from nhle_pipeline.pipeline.errors import GateFailure
    from nhle_pipeline.pipeline.loading import load_data
    from nhle_pipeline.pipeline.quantize import quantize_release
    from nhle_pipeline.pipeline.run import run_pipeline

    dataset, arch = SETTINGS[name]
    data = load_benchmark_data(dataset, args.data_root)
    _, info = cached_original(Path(args.cache), dataset, arch, data, RECIPES[dataset], 0, torch.device("cpu"))
    log(f"{name}: original {'from cache' if info['cached'] else 'trained'} ({info['path']})")
    files: dict[str, Path] = {}
    releases: dict[int | None, Path] = {}
    for ir in IR_SETTINGS:
        config = _config(dataset, arch, info["path"], args.data_root, work, ir)
        t0 = time.perf_counter()
        releases[ir] = run_pipeline(load_config(config), config).path
        files[f"release, export.ir_version {ir if ir is not None else 'unset'}"] = releases[ir] / "model.onnx"
        log(f"{name}: release {releases[ir].name} in {time.perf_counter() - t0:.1f}s")
    for mode in MODES:
        out = work / "releases" / f"{releases[DERIVED_FROM].name}-{mode}"
        try:
            derived, verdict = quantize_release(releases[DERIVED_FROM], mode, out).path, "released"
        except GateFailure as e:
            derived, verdict = Path(e.report_dir), "not released: its gates refused it"
        files[f"{mode} of the IR {DERIVED_FROM} release ({verdict})"] = derived / "model.onnx"
    cfg = load_config(_config(dataset, arch, info["path"], args.data_root, work, None))
    test = load_data(cfg, cache_dir=work / "data").test
    images = np.concatenate(list(test.image_batches(np.arange(min(IMAGES, len(test))), BATCH)))
    return files, images.astype(np.float32)


def venv_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + BATCH]})[0] for i in range(0, len(x), BATCH)])


def run_child(python: str, files: dict[str, Path], images: Path, work: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Load and run each file under ``python``'s onnxruntime: (its report, {key: logits})."""
    script, job = work / "child.py", work / "job.json"
    script.write_text(CHILD)
    job.write_text(json.dumps({"images": str(images), "batch": BATCH, "files": {k: str(p) for k, p in files.items()},
                               "logits": str(work / "logits.npz"), "result": str(work / "result.json")}))
    subprocess.run([python, str(script), str(job)], check=True, timeout=CHILD_TIMEOUT_S)
    with np.load(work / "logits.npz") as z:
        logits = {k: z[k] for k in z.files}
    return json.loads((work / "result.json").read_text()), logits


def run_everywhere(paths: dict[str, Path], x: np.ndarray, args: argparse.Namespace, work: Path,
                   interpreters: list[dict]) -> dict[str, dict]:
    """Each file under this environment's onnxruntime and every --python's: {key: row}, a row
    holding the file's IR and opset, this environment's logits and one cell per interpreter."""
    import onnx

    np.save(work / "images.npy", x)
    rows = {}
    for k, path in paths.items():
        m = onnx.load(str(path), load_external_data=False)
        rows[k] = {"ir_version": int(m.ir_version), "logits": venv_logits(path, x), "others": [],
                   "opset": next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))}
    for i, python in enumerate(args.python):
        child = work / f"child{i}"
        child.mkdir()
        report, logits = run_child(python, paths, work / "images.npy", child)
        if len(interpreters) < len(args.python):
            interpreters.append({"python": python, "onnxruntime": report["onnxruntime"], "numpy": report["numpy"],
                                 "python_version": report["python"]})
        for k, row in rows.items():
            r = report["files"][k]
            row["others"].append({
                "loaded": r["loaded"], "reason": None if r["loaded"] else reason(r["error"]),
                "max_abs_diff": float(np.abs(logits[k] - row["logits"]).max()) if r["loaded"] else None})
    return rows


def sweep(args: argparse.Namespace, work: Path, interpreters: list[dict]) -> list[dict]:
    """A seeded conv net (random weights) exported at every opset the exporter takes, with each
    export.ir_version that carries it: which onnxruntime loads which (opset, IR)."""
    from nhle_pipeline.export.onnx_export import export_onnx
    from nhle_pipeline.export.onnx_file import IR_VERSION_MAX_OPSET
    from nhle_pipeline.pipeline.config import OPSET_MAX, OPSET_MIN
    from nhle_pipeline.pipeline.models import build_model

    torch.manual_seed(0)
    model = build_model(SWEEP_ARCH, num_classes=10, input_shape=SWEEP_INPUT, kwargs={}).eval()
    paths, settings = {}, {}
    for opset in range(OPSET_MIN, OPSET_MAX + 1):
        for ir in IR_SETTINGS:
            if ir is not None and opset > IR_VERSION_MAX_OPSET[ir]:
                continue  # refused by the config (and by export_onnx)
            key = f"s{len(paths)}"
            paths[key] = work / f"{SWEEP_ARCH}-opset{opset}-ir{ir}.onnx"
            export_onnx(model, SWEEP_INPUT, paths[key], opset=opset, ir_version=ir)
            settings[key] = (opset, ir)
    x = np.random.default_rng(0).random((SWEEP_IMAGES, *SWEEP_INPUT), dtype=np.float32)
    rows = run_everywhere(paths, x, args, work, interpreters)
    log(f"sweep: {len(paths)} files (opsets {OPSET_MIN}-{OPSET_MAX}) run under {len(args.python)} interpreter(s)")
    return [{"opset_setting": settings[k][0], "ir_setting": settings[k][1], **{f: v for f, v in row.items() if f != "logits"}}
            for k, row in rows.items()]


def measure(args: argparse.Namespace, tmp: Path) -> dict:
    import onnx
    import onnxruntime

    rows: list[dict] = []
    interpreters: list[dict] = []
    for name in args.setting_names:
        work = tmp / name
        work.mkdir()
        files, x = release_files(name, args, work)
        labels = {f"f{i}": label for i, label in enumerate(files)}
        got = run_everywhere({k: files[label] for k, label in labels.items()}, x, args, work, interpreters)
        ir10 = got["f0"]["logits"]  # the exporter's own file: the same weights, the same graph
        for k, label in labels.items():
            row = got[k]
            release = label.startswith("release")
            rows.append({"setting": name, "file": label, "release": release,
                         "venv_vs_ir10": float(np.abs(row["logits"] - ir10).max()) if release else None,
                         **{f: v for f, v in row.items() if f != "logits"}})
        log(f"{name}: {len(files)} files run under {len(args.python)} other interpreter(s)")
    work = tmp / "sweep"
    work.mkdir()
    swept = sweep(args, work, interpreters)
    facts = machine_facts(1, torch.device("cpu"))
    facts["onnxruntime (this environment)"] = onnxruntime.__version__
    facts["onnx"] = onnx.__version__
    return {"rows": rows, "sweep": swept, "interpreters": interpreters, "machine": facts, "images": IMAGES}


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:3])


def oldest_loading(cells: list[dict], interpreters: list[dict]) -> str:
    """The oldest onnxruntime run that loads the file, if every newer one run does too."""
    order = sorted(range(len(interpreters)), key=lambda i: _version(interpreters[i]["onnxruntime"]))
    oldest = None
    for i in reversed(order):
        if not cells[i]["loaded"]:
            break
        oldest = interpreters[i]["onnxruntime"]
    return oldest or "none of those run"


def verdicts(record: dict) -> list[str]:
    """Per interpreter: do the files load and give this environment's logits, or are they refused?"""
    out = []
    for i, it in enumerate(record["interpreters"]):
        groups: dict[tuple[bool, int], list[dict]] = {}
        for row in record["rows"]:
            groups.setdefault((row["release"], row["ir_version"]), []).append(row["others"][i])
        parts = []
        for (release, ir), cells in sorted(groups.items(), key=lambda kv: (not kv[0][0], -kv[0][1])):
            loaded = [c for c in cells if c["loaded"]]
            worst = max((c["max_abs_diff"] for c in loaded), default=None)
            same = "" if worst is None else (f", max |Δlogit| {worst:.3g} "
                                             f"({'within' if worst <= ATOL else 'NOT within'} {ATOL:g})")
            what = "releases" if release else "derived releases"
            parts.append(f"IR {ir} {what}: {len(loaded)} of {len(cells)} load{same}")
        out.append(f"- onnxruntime {it['onnxruntime']}: " + "; ".join(parts))
    return out


def _cell(c: dict) -> str:
    return f"loads, {c['max_abs_diff']:.3g}" if c["loaded"] else f"**refused**: {c['reason']}"


def render_markdown(record: dict) -> str:
    its = record["interpreters"]
    here = record["machine"]["onnxruntime (this environment)"]
    head = " | ".join(it["onnxruntime"] for it in its)
    lines = [
        "# Which onnxruntime loads a release (`export.ir_version`)",
        "",
        "```bash",
        *[f"python3 -m venv {Path(it['python']).parent.parent} && {Path(it['python']).parent}/pip install "
          f"onnxruntime=={it['onnxruntime']} 'numpy<2'" for it in its],
        record["command"],
        "```",
        "",
        "## Releases",
        "",
        "Each release is `pipeline run` (default config, opset 18, forget class 0) of the same original, "
        "with `export.ir_version` unset (the exporter's IR 10), 9 and 8; each derivative is `pipeline "
        f"quantize` of the IR {DERIVED_FROM} release. Every `model.onnx` ran on the first {record['images']} "
        f"test images (batches of {BATCH}, CPU provider, one thread) under this environment's onnxruntime "
        f"{here} and, in a child process, under each interpreter below. A cell: *loads* and the largest "
        "|Δlogit| against this environment's logits of the same file, or *refused* and onnxruntime's reason. "
        "In the *this environment* column of an IR 9 or 8 release: the largest |Δlogit| against the IR 10 "
        "release.",
        "",
        f"| setting | model.onnx | IR | opset | {here} (this environment) | {head} |",
        "| --- | --- | ---: | ---: | --- |" + " --- |" * len(its),
    ]
    for row in record["rows"]:
        vs = row["venv_vs_ir10"]
        mine = "loads" + (f", {vs:.3g} against IR 10" if vs is not None and row["ir_version"] != 10 else "")
        lines.append(f"| {row['setting']} | {row['file']} | {row['ir_version']} | {row['opset']} | {mine} | "
                     + " | ".join(_cell(c) for c in row["others"]) + " |")
    lines += ["", "Per interpreter:", "", *verdicts(record), "",
              "## Every opset and IR the export writes", "",
              f"A `{SWEEP_ARCH}` (seeded random weights, input {SWEEP_INPUT}) exported by `export_onnx` at each "
              "opset with each `export.ir_version` that carries it (onnx's VERSION_TABLE; the config refuses "
              f"the others), run on {SWEEP_IMAGES} random images. Cells as above; *oldest*: the oldest "
              "onnxruntime run that loads the file when every newer one run does too.", "",
              f"| opset | `export.ir_version` | IR | oldest | {head} |",
              "| ---: | --- | ---: | --- |" + " --- |" * len(its)]
    for row in record["sweep"]:
        ir = "unset" if row["ir_setting"] is None else str(row["ir_setting"])
        lines.append(f"| {row['opset']} | {ir} | {row['ir_version']} | {oldest_loading(row['others'], its)} | "
                     + " | ".join(_cell(c) for c in row["others"]) + " |")
    lines += ["", "| interpreter | onnxruntime | numpy | python |", "| --- | --- | --- | --- |",
              *[f"| `{it['python']}` | {it['onnxruntime']} | {it['numpy']} | {it['python_version']} |" for it in its],
              "", "| machine | |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in record["machine"].items()],
              f"| benchmark wall time | {record['wall_s']:.0f} s |", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ort-compat-") as tmp:
        record = measure(args, Path(tmp))
    record["command"] = "python -m benchmarks.ort_compat " + " ".join(argv)
    record["wall_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = render_markdown(record)
    (out / "ort-compat.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
