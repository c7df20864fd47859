"""Fail closed: every bad input is exit 2, one `error:` line, no traceback, nothing written.

A corpus of broken configs, weights, data, output paths, ONNX files and
tampered releases, each pushed through the CLI (`run`, `train`, `verify`,
`inspect`). For every case the whole case folder (configs, data, releases) is
snapshotted (paths + sha256) before and after: it must not change at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nhle_pipeline.pipeline.cli import cli
from tests.conftest import digits_config, write_config


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: links as 'link -> <target>', folders as 'dir', files as '<bytes>:<sha256>'."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = f"link -> {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            data = p.read_bytes()
            out[rel] = f"{len(data)}:{hashlib.sha256(data).hexdigest()}"
    return out


@dataclass
class Ctx:
    """What a case may build in its own folder before the command runs."""

    tmp: Path
    weights: Path
    shipped: Path | None  # a real release of the digits model (cases marked _needs_release only)

    @property
    def release(self) -> Path:
        assert self.shipped is not None, "this case reads the shipped release: wrap its maker in _needs_release"
        return self.shipped

    @property
    def rel(self) -> Path:
        return self.tmp / "releases"

    def cfg(self, name: str = "run.yaml", **overrides) -> Path:
        return write_config(self.tmp / name, digits_config(self.weights, self.rel, **overrides))

    def text(self, name: str, content: str | bytes) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
        return p

    def earlier_release(self) -> Path:
        """An existing release (other name) that a failing run must leave alone."""
        old = self.rel / "earlier"
        old.mkdir(parents=True)
        (old / "model.onnx").write_bytes(b"earlier model")
        (old / "manifest.json").write_text("{}")
        return old

    def npz_root(self, train: dict | None = None, test: dict | None = None) -> Path:
        root = self.tmp / "npz"
        root.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        good = {"x": rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), "y": np.arange(40) % 10}
        np.savez(root / "train.npz", **(good if train is None else train))
        np.savez(root / "test.npz", **(good if test is None else test))
        return root

    def npz_cfg(self, train: dict | None = None, test: dict | None = None, **overrides) -> Path:
        root = self.npz_root(train, test)
        return self.cfg(data={"dataset": "npz", "root": str(root)}, **overrides)

    def copy_release(self) -> Path:
        dst = self.tmp / "shipped" / "digits-test"
        shutil.copytree(self.release, dst)
        return dst


def _edit_manifest(rel: Path, edit: Callable[[dict], None], reseal: bool = False) -> Path:
    """Edit a copied release's manifest; ``reseal`` recomputes its seal (a deliberate forger)."""
    from nhle_pipeline.pipeline.release.manifest import MANIFEST_SEAL, manifest_seal

    p = rel / "manifest.json"
    m = json.loads(p.read_text())
    edit(m)
    if reseal:
        m[MANIFEST_SEAL] = manifest_seal(m)
    p.write_text(json.dumps(m, indent=2))
    return rel


def _needs_release(make: Callable[[Ctx], list]) -> Callable[[Ctx], list]:
    """Mark a case that reads the shipped release: building that release is a whole
    `pipeline run`, so these cases are ``slow`` (the others stay in the fast lane)."""
    make.needs_release = True  # type: ignore[attr-defined]
    return make


def _tamper(edit: Callable[[Path], None]) -> Callable[[Ctx], list]:
    def make(c: Ctx) -> list:
        rel = c.copy_release()
        edit(rel)
        return ["verify", rel]

    return _needs_release(make)


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _replace_model_consistently(rel: Path, content: bytes) -> None:
    """model.onnx replaced and the manifest updated to match: only the ONNX reader can object."""
    (rel / "model.onnx").write_bytes(content)
    digest = {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}
    _edit_manifest(rel, lambda m: m["files"].__setitem__("model.onnx", digest), reseal=True)


def _lenet_weights(c: Ctx) -> Path:
    from nhle_pipeline.pipeline.checkpoint import save_weights
    from nhle_pipeline.pipeline.models import build_model

    p = c.tmp / "lenet.safetensors"
    save_weights(build_model("lenet", num_classes=10, input_shape=(1, 16, 16)), p)
    return p


def _mlp_weights(c: Ctx, hidden: list[int]) -> Path:
    from nhle_pipeline.pipeline.checkpoint import save_weights
    from nhle_pipeline.pipeline.models import build_model

    p = c.tmp / "other-mlp.safetensors"
    save_weights(build_model("mlp", num_classes=10, input_shape=(1, 8, 8), kwargs={"hidden": hidden}), p)
    return p


def _truncated_weights(c: Ctx) -> Path:
    data = c.weights.read_bytes()
    return c.text("trunc.safetensors", data[: len(data) // 2])


def _torch_save(c: Ctx, name: str, obj) -> Path:
    p = c.tmp / name
    torch.save(obj, p)
    return p


class _Exploit:
    """Unpickling this runs a shell command that creates a file: the case snapshot would show it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _malicious(c: Ctx, zipped: bool) -> Path:
    p = c.tmp / ("evil-zip.pt" if zipped else "evil-raw.pt")
    payload = {"classifier.weight": _Exploit(c.tmp / "pwned")}
    if zipped:
        torch.save(payload, p)
    else:
        p.write_bytes(pickle.dumps(payload))
    return p


def _nan_weights(c: Ctx) -> Path:
    """The digits MLP's weights with one NaN in a hidden layer."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(c.weights))
    name = sorted(k for k in state if k.endswith("weight"))[0]
    state[name][0, 0] = float("nan")
    out = c.tmp / "nan.safetensors"
    save_file(state, str(out))
    return out


def _weights(path_fn: Callable[[Ctx], Path | str | None], **model) -> Callable[[Ctx], list]:
    def make(c: Ctx) -> list:
        w = path_fn(c)
        return ["run", c.cfg(model={"weights": None if w is None else str(w), **model})]

    return make


def _run(**overrides) -> Callable[[Ctx], list]:
    return lambda c: ["run", c.cfg(**overrides)]


def _run_yaml(text: str | bytes, name: str = "run.yaml") -> Callable[[Ctx], list]:
    return lambda c: ["run", c.text(name, text)]


def _mutated(edit: Callable[[dict], None], cmd: str = "run") -> Callable[[Ctx], list]:
    """A valid digits config with one deep edit (for keys below the first level)."""

    def make(c: Ctx) -> list:
        cfg = digits_config(c.weights, c.rel)
        edit(cfg)
        return [cmd, write_config(c.tmp / "run.yaml", cfg)]

    return make


def _npz(train: dict | None = None, test: dict | None = None, cmd: str = "run", **overrides):
    return lambda c: [cmd, c.npz_cfg(train, test, **overrides)]


def _corrupt_imagefolder(root: Path) -> Path:
    """train/ and test/ with one class folder each; the first training image is not a JPEG."""
    from PIL import Image

    for part in ("train", "test"):
        (root / part / "zero").mkdir(parents=True)
        Image.new("L", (8, 8)).save(root / part / "zero" / "ok.png")
    (root / "train" / "zero" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def _u8(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8)


def _labels(n: int) -> np.ndarray:
    return np.arange(n) % 10


def _link_then(c: Ctx, link: Path, to: Path) -> Path:
    """A symbolic link at ``link`` (pointing at ``to``, which may not exist); returns the case's config."""
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(to, target_is_directory=True)
    return c.cfg()


def _sys_path() -> str:
    return "/sys/nhle-pipeline-test-release"  # not creatable, even by root


def _with_earlier(make: Callable[[Ctx], list]) -> Callable[[Ctx], list]:
    def wrapped(c: Ctx) -> list:
        c.earlier_release()
        return make(c)

    return wrapped


def _alias_bomb(levels: int) -> str:
    """A YAML flow list of 9**levels ones, a few hundred bytes long (each level aliases the last 9 times)."""
    text = "&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"
    for i in range(1, levels):
        text = f"&a{i} [{text}, " + ", ".join([f"*a{i - 1}"] * 8) + "]"
    return text


def _set(path: str, value):
    """Edit for _mutated: set a dotted key, creating sections on the way."""

    def edit(cfg: dict) -> None:
        *parents, last = path.split(".")
        d = cfg
        for k in parents:
            d = d.setdefault(k, {})
        d[last] = value

    return edit


# (id, substring the error line must contain, case builder -> argv)
CASES: list[tuple[str, str, Callable[[Ctx], list]]] = [
    # --- YAML and document shape --------------------------------------------------------------
    ("yaml-unclosed-bracket", "run.yaml: invalid YAML", _run_yaml("model: [mlp\nseed: 0\n")),
    ("yaml-bad-indent", "run.yaml: invalid YAML", _run_yaml("model:\n  arch: mlp\n num_classes: 10\n")),
    ("yaml-tab-indent", "run.yaml: invalid YAML", _run_yaml("model:\n\tarch: mlp\n")),
    ("yaml-duplicate-key", "run.yaml: invalid YAML at line 3, column 3: the key 'seed' is given twice",
     _run_yaml("model:\n  seed: 0\n  seed: 1\n")),
    ("yaml-duplicate-anchor-alias", "run.yaml: invalid YAML", _run_yaml("a: *nothing\n")),
    ("yaml-python-tag", "run.yaml: invalid YAML", _run_yaml("seed: !!python/object/apply:os.system ['true']\n")),
    ("yaml-not-utf8", "run.yaml: cannot read as UTF-8", _run_yaml(b"seed: \xff\xfe\n")),
    ("empty-file", "run.yaml: the file is empty", _run_yaml("")),
    ("only-comments", "run.yaml: the file is empty", _run_yaml("# nothing here\n\n")),
    ("scalar-document", "run.yaml: expected a mapping", _run_yaml("just a string\n")),
    ("list-document", "run.yaml: expected a mapping", _run_yaml("- seed: 0\n- model: mlp\n")),
    ("yaml-nested-too-deep", "run.yaml: invalid YAML", _run_yaml("seed: " + "[" * 3000 + "]" * 3000 + "\n")),
    ("yaml-int-too-long", "run.yaml: invalid YAML", _run_yaml("seed: " + "7" * 5000 + "\n")),
    ("yaml-key-with-newline", "unknown key", _run_yaml('"se\\ned": 1\nmodel: {arch: mlp, num_classes: 10}\nforget: {classes: [0]}\n')),
    ("config-missing", "nope.yaml: no such config file", lambda c: ["run", c.tmp / "nope.yaml"]),
    ("config-is-a-folder", "CONFIG", lambda c: ["run", c.tmp]),
    # --- unknown keys at several depths -------------------------------------------------------
    ("unknown-top-key", "sede: unknown key", _mutated(_set("sede", 1))),
    ("unknown-key-depth-2", "model.wieghts: unknown key", _mutated(_set("model.wieghts", "x"))),
    ("unknown-key-depth-3", "unlearn.nhle.learning_rate: unknown key", _mutated(_set("unlearn.nhle.learning_rate", 0.1))),
    ("unknown-key-depth-4", "verify.gates.acc_f_maxx: unknown key", _mutated(_set("verify.gates.acc_f_maxx", 0.1))),
    ("unknown-key-in-normalize", "data.normalize.scale: unknown key",
     _mutated(_set("data.normalize", {"mean": [0.5], "std": [0.5], "scale": 2}))),
    # --- wrong types ----------------------------------------------------------------------------
    ("seed-string", "seed", _mutated(_set("seed", "zero"))),
    ("seed-float", "seed", _mutated(_set("seed", 1.5))),
    ("lr-string", "unlearn.nhle.lr", _mutated(_set("unlearn.nhle.lr", "0.1"))),
    ("num-classes-float", "model.num_classes", _mutated(_set("model.num_classes", 10.5))),
    ("num-classes-bool", "model.num_classes", _mutated(_set("model.num_classes", True))),
    ("classes-scalar", "forget.classes", _mutated(_set("forget.classes", 0))),
    ("classes-unknown-name", "forget.classes", _mutated(_set("forget.classes", ["airplane"]))),
    ("classes-name-and-id-twice", "forget.classes", _mutated(_set("forget.classes", ["0", 0]))),
    ("section-is-string", "model", _mutated(_set("model", "mlp"))),
    ("section-is-list", "unlearn", _mutated(_set("unlearn", [1, 2]))),
    ("batch-size-bool", "data.batch_size", _mutated(_set("data.batch_size", True))),
    ("kwargs-list", "model.kwargs", _mutated(_set("model.kwargs", [256]))),
    ("grad-clip-string", "unlearn.nhle.grad_clip", _mutated(_set("unlearn.nhle.grad_clip", "off"))),
    ("device-unknown", "device", _mutated(_set("device", "tpu"))),
    ("dataset-unknown", "data.dataset", _mutated(_set("data.dataset", "imagenet"))),
    ("cwm-mode-unknown", "unlearn.cwm.mode", _mutated(_set("unlearn.cwm.mode", "half"))),
    ("trust-pickle-string", "model.trust_pickle", _mutated(_set("model.trust_pickle", "yes"))),
    # --- out of range ---------------------------------------------------------------------------
    ("seed-negative", "seed", _mutated(_set("seed", -1))),
    ("seed-too-big-for-sklearn", "seed", _mutated(_set("seed", 2**40))),
    ("kwargs-binary", "model.kwargs", _run_yaml("model: {arch: mlp, num_classes: 10, kwargs: {a: !!binary /w==}}\nforget: {classes: [0]}\n")),
    ("kwargs-recursive-alias", "model.kwargs", _run_yaml("model: {arch: mlp, num_classes: 10, kwargs: {a: &x [*x]}}\nforget: {classes: [0]}\n")),
    ("kwargs-alias-bomb", "model.kwargs",
     _run_yaml(f"model: {{arch: mlp, num_classes: 10, kwargs: {{a: {_alias_bomb(9)}}}}}\nforget: {{classes: [0]}}\n")),
    ("wrong-value-quoted-short", "seed: Input should be a valid integer", _run_yaml(f"seed: {_alias_bomb(9)}\n")),
    ("lr-negative", "unlearn.nhle.lr", _mutated(_set("unlearn.nhle.lr", -0.1))),
    ("lr-zero", "unlearn.nhle.lr", _mutated(_set("unlearn.nhle.lr", 0))),
    ("samples-per-class-zero", "forget.samples_per_class", _mutated(_set("forget.samples_per_class", 0))),
    ("momentum-one", "unlearn.nhle.momentum", _mutated(_set("unlearn.nhle.momentum", 1.0))),
    ("max-steps-zero", "unlearn.nhle.max_steps", _mutated(_set("unlearn.nhle.max_steps", 0))),
    ("stop-acc-above-one", "unlearn.nhle.stop_forget_acc", _mutated(_set("unlearn.nhle.stop_forget_acc", 1.5))),
    ("stop-margin-negative", "unlearn.nhle.stop_margin", _mutated(_set("unlearn.nhle.stop_margin", -1.0))),
    ("anchor-negative", "unlearn.nhle.anchor", _mutated(_set("unlearn.nhle.anchor", -3.0))),
    ("optimizer-unknown", "unlearn.nhle.optimizer", _mutated(_set("unlearn.nhle.optimizer", "adam"))),
    ("variant-unknown", "unlearn.nhle.variant", _mutated(_set("unlearn.nhle.variant", "anchor"))),
    ("retained-per-class-negative", "unlearn.nhle.retained_per_class",
     _mutated(_set("unlearn.nhle.retained_per_class", -8))),
    ("too-few-retained-samples", "unlearn.nhle.retained_per_class",
     _mutated(_set("unlearn.nhle.retained_per_class", 500))),
    ("opset-too-old", "export.opset", _mutated(_set("export.opset", 13))),
    ("gate-negative", "verify.gates.acc_f_max", _mutated(_set("verify.gates.acc_f_max", -0.01))),
    ("suppress-bias-positive", "unlearn.cwm.suppress_bias", _mutated(_set("unlearn.cwm.suppress_bias", 5.0))),
    ("batch-size-zero", "data.batch_size", _mutated(_set("data.batch_size", 0))),
    ("normalize-std-zero", "data.normalize", _mutated(_set("data.normalize", {"mean": [0.5], "std": [0.0]}))),
    ("num-classes-one", "model.num_classes", _mutated(_set("model.num_classes", 1))),
    ("npz-without-root", "data", _mutated(_set("data", {"dataset": "npz"}))),
    ("model-missing", "model: required field is missing", _mutated(lambda d: d.pop("model"))),
    ("forget-missing", "forget: required field is missing", _mutated(lambda d: d.pop("forget"))),
    # --- forget request -------------------------------------------------------------------------
    ("forget-class-too-big", "forget.classes", _run(forget={"classes": [10]})),
    ("forget-class-negative", "forget.classes", _run(forget={"classes": [-1]})),
    ("forget-duplicated", "forget.classes", _run(forget={"classes": [3, 3]})),
    ("forget-every-class", "forget.classes", _run(forget={"classes": list(range(10))})),
    ("forget-empty", "forget.classes", _run(forget={"classes": []})),
    ("too-few-forget-samples", "forget.samples_per_class", _run(forget={"classes": [0], "samples_per_class": 500})),
    ("forget-class-absent-from-data", "forget.samples_per_class",
     _npz({"x": _u8(30, 8, 8), "y": np.arange(30) % 9 + 1})),
    # --- model and weights ----------------------------------------------------------------------
    ("num-classes-vs-checkpoint", "model.weights", _run(model={"num_classes": 12})),
    ("num-classes-below-data-labels", "model.num_classes", _run(model={"num_classes": 8})),
    ("weights-missing-file", "model.weights", _weights(lambda c: c.tmp / "absent.safetensors")),
    ("weights-nan", "holds NaN or inf values", _weights(_nan_weights)),
    ("weights-null-for-run", "model.weights", _weights(lambda c: None)),
    ("weights-is-a-folder", "model.weights", _weights(lambda c: c.tmp)),
    ("weights-empty-safetensors", "model.weights", _weights(lambda c: c.text("e.safetensors", b""))),
    ("weights-empty-pt", "model.weights", _weights(lambda c: c.text("e.pt", b""))),
    ("weights-truncated", "model.weights", _weights(_truncated_weights)),
    ("weights-text-as-pt", "model.weights", _weights(lambda c: c.text("notes.pt", "hello, not a model\n"))),
    ("weights-json-as-safetensors", "model.weights", _weights(lambda c: c.text("w.safetensors", '{"a": 1}'))),
    ("weights-list-pickle", "model.weights", _weights(lambda c: _torch_save(c, "list.pt", [1, 2, 3]))),
    ("weights-dict-of-ints", "model.weights", _weights(lambda c: _torch_save(c, "ints.pt", {"a": 1}))),
    ("weights-malicious-pickle-zip", "model.weights", _weights(lambda c: _malicious(c, zipped=True))),
    ("weights-malicious-pickle-raw", "model.weights", _weights(lambda c: _malicious(c, zipped=False))),
    ("weights-lenet-for-mlp", "model.weights", _weights(_lenet_weights)),
    ("weights-other-mlp-width", "model.weights", _weights(lambda c: _mlp_weights(c, [32]))),
    ("arch-unknown", "model.arch", _run(model={"arch": "resnet1000"})),
    ("arch-lenet-on-8x8", "model.arch", _run(model={"arch": "lenet"})),
    ("arch-import-missing", "model.arch", _run(model={"arch": "no_such_module_xyz:build"})),
    ("arch-import-not-callable", "model.arch", _run(model={"arch": "tests.factories:nothing", "trust_code": True})),
    ("arch-wrong-output-width", "model.num_classes",
     _run(model={"arch": "tests.factories:wrong_width", "trust_code": True})),
    ("arch-import-untrusted", "model.trust_code: true", _run(model={"arch": "tests.factories:tiny_net"})),
    ("opset-beyond-the-exporter", "export.opset", _mutated(lambda c: c.__setitem__("export", {"opset": 99}))),
    ("nhle-lr-inf", "unlearn.nhle.lr", _mutated(lambda c: c.setdefault("unlearn", {}).__setitem__("nhle", {"lr": float("inf")}))),
    ("normalize-mean-nan", "data.normalize.mean",
     _mutated(lambda c: c["data"].__setitem__("normalize", {"mean": [float("nan")], "std": [1.0]}))),
    ("arch-torch-hub-untrusted", "imports and runs code", _run(model={"arch": "torch.hub:load"})),
    ("kwargs-unknown", "model.kwargs", _run(model={"kwargs": {"depth": 3}})),
    ("kwargs-negative-width", "model.kwargs", _run(model={"kwargs": {"hidden": [-5]}})),
    ("kwargs-width-string", "model.kwargs", _run(model={"kwargs": {"hidden": "wide"}})),
    ("head-unknown", "model.head", _run(model={"head": "classifierr"})),
    ("head-not-linear", "model.head", _run(model={"head": "features.1"})),
    ("audit-layer-unknown", "verify.audit.layers: 'no_such' is not a layer of the graph; its layers: relu",
     _run(verify={"audit": {"layers": ["no_such"]}})),
    ("audit-layer-head-input", "verify.audit.layers: 'relu_1' is the head's input",
     _run(verify={"audit": {"layers": ["relu_1"]}})),
    ("audit-layers-twice", "verify.audit.layers: duplicate layers", _run(verify={"audit": {"layers": ["relu", "relu"]}})),
    # --- data -----------------------------------------------------------------------------------
    ("data-root-missing", "data.root", _run(data={"dataset": "npz", "root": "/nonexistent/nhle-data"})),
    ("data-root-is-a-file", "data.root", lambda c: ["run", c.cfg(data={"dataset": "npz", "root": str(c.text("f", "x"))})]),
    ("npz-train-missing", "train.npz", lambda c: ["run", c.cfg(data={"dataset": "npz", "root": str(c.tmp)})]),
    ("npz-wrong-keys", "train.npz", _npz({"images": _u8(20, 8, 8), "labels": _labels(20)})),
    ("npz-float-pixels", "train.npz", _npz({"x": np.zeros((20, 8, 8), np.float32), "y": _labels(20)})),
    ("npz-flat-images", "train.npz", _npz({"x": _u8(20, 64), "y": _labels(20)})),
    ("npz-5d-images", "train.npz", _npz({"x": _u8(20, 1, 1, 8, 8), "y": _labels(20)})),
    ("npz-train-test-shape-mismatch", "data.root", _npz(test={"x": _u8(20, 10, 10), "y": _labels(20)})),
    ("npz-rgb-vs-gray", "data.root", _npz(test={"x": _u8(20, 8, 8, 3), "y": _labels(20)})),
    ("npz-label-count-mismatch", "train.npz", _npz({"x": _u8(20, 8, 8), "y": _labels(19)})),
    ("npz-float-labels", "test.npz", _npz(test={"x": _u8(20, 8, 8), "y": np.zeros(20)})),
    ("npz-negative-labels", "train.npz", _npz({"x": _u8(20, 8, 8), "y": -np.ones(20, dtype=np.int64)})),
    ("npz-labels-beyond-num-classes", "model.num_classes", _npz({"x": _u8(20, 8, 8), "y": np.arange(20)})),
    ("npz-empty-test-split", "test.npz", _npz(test={"x": _u8(0, 8, 8), "y": np.zeros(0, np.int64)})),
    ("npz-object-array", "train.npz", _npz({"x": np.array([None] * 20, dtype=object), "y": _labels(20)})),
    ("npz-garbage-archive", "test.npz",
     lambda c: (c.npz_root(), c.text("npz/test.npz", b"PK\x03\x04 garbage"), ["run", c.cfg(data={"dataset": "npz", "root": str(c.tmp / "npz")})])[-1]),
    ("normalize-channel-mismatch", "data.normalize",
     _run(data={"dataset": "digits", "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}})),
    ("npz-no-test-sample-of-the-forgotten-class", "forget.classes: [0] have no test sample",
     _npz(test={"x": _u8(20, 8, 8), "y": np.ones(20, dtype=np.int64)})),
    ("npz-one-image-test-split", "at least 2 are needed", _npz(test={"x": _u8(1, 8, 8), "y": np.zeros(1, np.int64)})),
    ("imagefolder-corrupt-jpeg", "broken.jpg: cannot decode the image", lambda c: ["run", c.cfg(data={
        "dataset": "imagefolder", "root": str(_corrupt_imagefolder(c.tmp / "imgs"))})]),
    ("imagefolder-no-split-folders", "data.root", lambda c: ["run", c.cfg(data={"dataset": "imagefolder", "root": str(c.tmp)})]),
    ("mnist-absent-no-download", "data.root", lambda c: ["run", c.cfg(data={"dataset": "mnist", "root": str(c.tmp)})]),
    # --- output paths and release names ---------------------------------------------------------
    ("out-is-a-file", "release.dir", lambda c: ["run", c.cfg(), "--out", c.text("afile", "x")]),
    ("out-below-a-file", "release.dir", lambda c: ["run", c.cfg(), "--out", c.text("afile", "x") / "sub"]),
    ("release-dir-is-a-file", "release.dir", lambda c: ["run", c.cfg(release={"dir": str(c.text("afile", "x")), "name": "n"})]),
    ("out-not-creatable", "release.dir", lambda c: ["run", c.cfg(), "--out", _sys_path()]),
    ("release-path-dangling-symlink", "is a symbolic link",
     lambda c: ["run", _link_then(c, c.rel / "digits-test", c.tmp / "gone"), "--force"]),
    ("release-path-symlink-no-force", "is a symbolic link", lambda c: ["run", _link_then(c, c.rel / "digits-test", c.tmp)]),
    ("staging-is-a-symlink", ".staging' is a symbolic link", lambda c: ["run", _link_then(c, c.rel / ".staging", c.tmp)]),
    ("release-exists-no-force", "already exists",
     lambda c: (c.earlier_release(), ["run", c.cfg(release={"dir": str(c.rel), "name": "earlier"})])[-1]),
    ("release-name-slash", "release.name", _with_earlier(_run(release={"name": "a/b"}))),
    ("release-name-dotdot", "release.name", _with_earlier(_run(release={"name": ".."}))),
    ("release-name-parent-escape", "release.name", _run(release={"name": "../escape"})),
    ("release-name-hidden", "release.name", _run(release={"name": ".staging"})),
    ("release-name-backslash", "release.name", _run(release={"name": "a\\b"})),
    ("release-name-empty", "release.name", _run(release={"name": ""})),
    ("release-name-from-unsafe-stem", "release.name",
     lambda c: ["run", write_config(c.tmp / "bad name!.yaml", {**digits_config(c.weights, c.rel), "release": {"dir": str(c.rel)}})]),
    # --- CLI arguments ----------------------------------------------------------------------------
    ("run-device-unknown", "--device", lambda c: ["run", c.cfg(), "--device", "tpu"]),
    ("run-unknown-option", "--bogus", lambda c: ["run", c.cfg(), "--bogus"]),
    ("run-missing-config", "CONFIG", lambda c: ["run"]),
    ("unknown-command", "frobnicate", lambda c: ["frobnicate"]),
    # --- pipeline train -------------------------------------------------------------------------
    ("train-weights-null", "model.weights", lambda c: ["train", c.cfg(model={"weights": None})]),
    ("train-weights-not-safetensors", "model.weights", lambda c: ["train", c.cfg(model={"weights": str(c.tmp / "w.pt")})]),
    ("train-weights-exist", "model.weights", lambda c: ["train", c.cfg()]),
    ("train-weights-is-folder", "model.weights",
     lambda c: ["train", c.cfg(model={"weights": str(c.tmp / "d.safetensors")}), "--force"] if (c.tmp / "d.safetensors").mkdir() is None else []),
    ("train-weights-below-a-file", "model.weights",
     lambda c: ["train", c.cfg(model={"weights": str(c.text("afile", "x") / "w.safetensors")}, train={"epochs": 1})]),
    ("train-weights-not-creatable", "model.weights",
     lambda c: ["train", c.cfg(model={"weights": _sys_path() + "/w.safetensors"}, train={"epochs": 1})]),
    ("train-unknown-key", "train.epoch: unknown key", _mutated(_set("train.epoch", 3), cmd="train")),
    ("train-lr-negative", "train.lr", _mutated(_set("train.lr", -1.0), cmd="train")),
    ("train-optimizer-unknown", "train.optimizer", _mutated(_set("train.optimizer", "rmsprop"), cmd="train")),
    ("train-bad-npz", "train.npz", _npz({"x": np.zeros((20, 8, 8), np.float32), "y": _labels(20)}, cmd="train",
                                        model={"weights": "/tmp/never-written.safetensors"})),
    ("train-device-unknown", "--device", lambda c: ["train", c.cfg(), "--device", "tpu"]),
    # --- pipeline inspect -------------------------------------------------------------------------
    ("inspect-missing", "absent.onnx", lambda c: ["inspect", c.tmp / "absent.onnx"]),
    ("inspect-empty", "empty.onnx", lambda c: ["inspect", c.text("empty.onnx", b"")]),
    ("inspect-garbage", "junk.onnx", lambda c: ["inspect", c.text("junk.onnx", os.urandom(512))]),
    ("inspect-text", "notes.onnx", lambda c: ["inspect", c.text("notes.onnx", "ir_version: 8\n")]),
    ("inspect-json", "m.onnx", lambda c: ["inspect", "--json", c.text("m.onnx", '{"graph": {}}')]),
    ("inspect-safetensors", ".safetensors", lambda c: ["inspect", c.weights]),
    ("inspect-truncated-model", "model.onnx",
     _needs_release(lambda c: ["inspect", c.text("t/model.onnx", (c.release / "model.onnx").read_bytes()[:5000])])),
    ("inspect-a-folder", "MODEL", lambda c: ["inspect", c.tmp]),
    # --- pipeline verify ----------------------------------------------------------------------------
    ("verify-missing-folder", "absent", lambda c: ["verify", c.tmp / "absent"]),
    ("verify-a-file", "RELEASE_DIR", lambda c: ["verify", c.text("afile", "x")]),
    ("verify-empty-folder", "manifest.json", lambda c: ["verify", c.tmp]),
    ("tamper-model-byte", "model.onnx", _tamper(lambda r: _flip_byte(r / "model.onnx"))),
    ("tamper-report-edited", "report.md", _tamper(lambda r: (r / "report.md").write_text("all good\n"))),
    ("tamper-file-added", "extra.txt", _tamper(lambda r: (r / "extra.txt").write_text("x"))),
    ("tamper-file-added-in-subfolder", "sub/model.onnx",
     _tamper(lambda r: ((r / "sub").mkdir(), shutil.copy(r / "model.onnx", r / "sub" / "model.onnx")))),
    ("tamper-model-removed", "model.onnx", _tamper(lambda r: (r / "model.onnx").unlink())),
    ("tamper-report-removed", "report.md", _tamper(lambda r: (r / "report.md").unlink())),
    ("tamper-manifest-removed", "manifest.json", _tamper(lambda r: (r / "manifest.json").unlink())),
    ("tamper-manifest-truncated", "manifest.json",
     _tamper(lambda r: (r / "manifest.json").write_text((r / "manifest.json").read_text()[:200]))),
    ("tamper-manifest-empty", "manifest.json", _tamper(lambda r: (r / "manifest.json").write_text(""))),
    ("tamper-manifest-list", "manifest.json", _tamper(lambda r: (r / "manifest.json").write_text("[]"))),
    ("tamper-manifest-nested-deep", "nested too deeply",
     _tamper(lambda r: (r / "manifest.json").write_text("[" * 200_000 + "]" * 200_000))),
    ("tamper-manifest-gate-loosened", "manifest.json",
     _tamper(lambda r: _edit_manifest(r, lambda m: m["config"]["verify"]["gates"].__setitem__("acc_f_max", 1.0)))),
    ("tamper-manifest-metric-edited", "manifest.json",
     _tamper(lambda r: _edit_manifest(r, lambda m: m["metrics"]["original"].__setitem__("acc_r", 0.5)))),
    ("tamper-manifest-forget-classes", "manifest.json",
     _tamper(lambda r: _edit_manifest(r, lambda m: m.__setitem__("forget_classes", [1])))),
    ("tamper-manifest-file-sha", "manifest.json",
     _tamper(lambda r: _edit_manifest(r, lambda m: m["files"]["report.md"].__setitem__("sha256", "0" * 64)))),
    ("tamper-manifest-seal-removed", "manifest.json",
     _tamper(lambda r: _edit_manifest(r, lambda m: m.pop("manifest_sha256")))),
    ("forged-manifest-forget-classes", "model.onnx",
     _tamper(lambda r: _edit_manifest(r, lambda m: m.__setitem__("forget_classes", [1]), reseal=True))),
    ("forged-manifest-files-not-a-mapping", "manifest.json",
     _tamper(lambda r: _edit_manifest(r, lambda m: m.__setitem__("files", "model.onnx"), reseal=True))),
    ("forged-manifest-file-entry-no-sha", "manifest.json",
     _tamper(lambda r: _edit_manifest(r, lambda m: m["files"].__setitem__("report.md", {"bytes": 1}), reseal=True))),
    ("forged-manifest-metrics-missing", "manifest.json",
     _tamper(lambda r: _edit_manifest(r, lambda m: m["metrics"].pop("original"), reseal=True))),
    ("forged-manifest-config-invalid", "manifest.json",
     _tamper(lambda r: _edit_manifest(r, lambda m: m["config"]["forget"].__setitem__("classes", [42]), reseal=True))),
    ("verify-corrupt-onnx", "model.onnx", _tamper(lambda r: _replace_model_consistently(r, b"\x08\x07garbage onnx"))),
    ("verify-non-onnx", "model.onnx", _tamper(lambda r: _replace_model_consistently(r, b"not a model at all\n"))),
    ("verify-truncated-onnx", "model.onnx",
     _tamper(lambda r: _replace_model_consistently(r, (r / "model.onnx").read_bytes()[:4096]))),
]


@pytest.fixture(scope="module")
def shipped_release(digits_weights, tmp_path_factory) -> Path:
    """One real release of the digits model, copied into each case that tampers with it."""
    root = tmp_path_factory.mktemp("shipped")
    cfg = write_config(root / "run.yaml", digits_config(digits_weights, root / "releases"))
    r = CliRunner().invoke(cli, ["run", str(cfg)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return root / "releases" / "digits-test"


def test_corpus_size():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(ids) >= 100


def _param(case_id: str, expect: str, make: Callable[[Ctx], list]):
    needs = getattr(make, "needs_release", False)
    return pytest.param(expect, make, needs, id=case_id, marks=[pytest.mark.slow] if needs else [])


@pytest.mark.parametrize("expect, make, needs_release", [_param(*c) for c in CASES])
def test_bad_input_fails_closed(request, tmp_path, digits_weights, expect, make, needs_release):
    case = tmp_path / "case"
    case.mkdir()
    shipped = request.getfixturevalue("shipped_release") if needs_release else None
    argv = make(Ctx(case, digits_weights, shipped))
    before = snapshot(case)

    r = invoke(*argv)

    crash = "".join(traceback.format_exception(r.exception)) if r.exception and not isinstance(r.exception, SystemExit) else ""
    assert not crash, f"uncaught exception:\n{crash}"
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert expect in lines[0], lines[0]
    if "--json" in map(str, argv):  # stdout: one JSON document carrying the same line and exit code
        doc = json.loads(r.stdout)
        assert (doc["exit_code"], "error: " + doc["error"]) == (2, lines[0]), r.stdout
    else:  # stdout: nothing, or the progress lines of stages that finished before the problem showed
        assert all(ln.startswith("✓ ") for ln in r.stdout.splitlines() if ln.strip()), r.output
    assert snapshot(case) == before, "a failing command changed the files"
