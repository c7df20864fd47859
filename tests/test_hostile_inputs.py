"""Hostile inputs a red-team found (issue #27): each ends as one `error:` line and exit 2 (or, for a
model that is merely bad, a failed gate, exit 1), never a traceback (exit 3), a hang or a
corrupted release.

The cases that read a release work on a copy of the session's digits release (a whole
`pipeline run`: ``slow``); each must leave its folder as it was.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from nhle_pipeline.pipeline.cli import cli
from nhle_pipeline.pipeline.jsonio import JSONInputError, loads
from tests.conftest import digits_config, write_config
from tests.test_bad_inputs import snapshot


def invoke(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def _no_crash(r) -> None:
    crash = "".join(traceback.format_exception(r.exception)) if r.exception and not isinstance(r.exception, SystemExit) else ""
    assert not crash, f"uncaught exception:\n{crash}"
    assert "Traceback" not in r.output and "internal error" not in r.output, r.output


def bad_input(r, *expect: str) -> str:
    """Exit 2 with one `error:` line holding every string of ``expect``; returns that line."""
    _no_crash(r)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for e in expect:
        assert e in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def shipped(digits_release, tmp_path) -> Path:
    """A copy of the session's digits release (forget 0), in a folder of its own."""
    dst = tmp_path / "shipped" / digits_release.name
    shutil.copytree(digits_release, dst)
    return dst


def _reseal(rel: Path, m: dict) -> None:
    """Write ``m`` as the release's manifest with a matching seal (a deliberate forger)."""
    from nhle_pipeline.pipeline.release.manifest import MANIFEST_SEAL, manifest_seal

    m[MANIFEST_SEAL] = manifest_seal(m)
    (rel / "manifest.json").write_text(json.dumps(m, indent=2))


def _verify_refused(rel: Path, *expect: str) -> str:
    before = snapshot(rel.parent)
    line = bad_input(invoke("verify", rel), *expect)
    assert snapshot(rel.parent) == before, "verify changed the release"
    return line


# --- 1. strict JSON: huge integers, duplicate keys, NaN where no number may be missing -----------


@pytest.mark.slow
def test_a_resealed_manifest_with_a_5000_digit_integer_is_bad_input(shipped):
    m = json.loads((shipped / "manifest.json").read_text())
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # the forger's Python may print it; the reader must still refuse it
    try:
        m["seed"] = int("7" * 5000)
        _reseal(shipped, m)
    finally:
        sys.set_int_max_str_digits(old)
    _verify_refused(shipped, "manifest.json", "5000 digits")


@pytest.mark.slow
def test_a_manifest_naming_a_key_twice_is_bad_input(shipped):
    """forget_classes [5] then [0]: json keeps the last (the seal matches it); a reader of the file sees [5]."""
    m = json.loads((shipped / "manifest.json").read_text())
    _reseal(shipped, m)
    text = (shipped / "manifest.json").read_text()
    assert text.count('"forget_classes": [') == 1
    (shipped / "manifest.json").write_text(text.replace('"forget_classes": [', '"forget_classes": [5], "forget_classes": [', 1))
    assert json.loads((shipped / "manifest.json").read_text())["forget_classes"] == [0]  # what json.loads saw
    _verify_refused(shipped, "manifest.json", "duplicate key 'forget_classes'")


@pytest.mark.slow
def test_a_key_twice_deep_in_the_manifest_is_bad_input(shipped):
    text = (shipped / "manifest.json").read_text()
    (shipped / "manifest.json").write_text(text.replace('"acc_f_max": ', '"acc_f_max": 1.0, "acc_f_max": ', 1))
    _verify_refused(shipped, "manifest.json", "duplicate key 'acc_f_max'")


@pytest.mark.parametrize("text, expect", [
    ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ('{"x": {"b": [1, {"c": 0, "c": 0}]}}', "duplicate key 'c'"),
    ("[" + "9" * 5000 + "]", "5000 digits"),
    ("1" + "0" * 150 + ".5", "characters long"),
    ("1e999", "beyond the range of a float"),
    ("-1e999", "beyond the range of a float"),
    ("NaN", "NaN where a finite number is expected"),
    ('{"v": Infinity}', "Infinity where a finite number is expected"),
    ("[-Infinity]", "-Infinity where"),
    ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
])
def test_the_strict_reader_refuses(text, expect):
    with pytest.raises(JSONInputError, match=None) as info:
        loads(text)
    assert expect in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, json.JSONDecodeError)


def test_the_strict_reader_reads_plain_json_and_nan_where_allowed():
    assert loads('{"a": [1, 2.5, -3e-7, "x", null, true], "b": {"a": 0}}') == {
        "a": [1, 2.5, -3e-7, "x", None, True], "b": {"a": 0}}
    assert loads(str(2**64)) == 2**64
    got = loads('{"auc": NaN, "r": Infinity, "l": -Infinity}', allow_nan=True)
    assert np.isnan(got["auc"]) and got["r"] == float("inf") and got["l"] == float("-inf")
    with pytest.raises(json.JSONDecodeError):
        loads('{"a": 1')  # malformed: json's own error, unchanged


def test_inspect_provenance_with_a_key_twice_stays_a_string():
    from nhle_pipeline.pipeline.inspection import typed_provenance

    assert typed_provenance({"class_names": '["a", "b"]'})["class_names"] == ["a", "b"]
    assert typed_provenance({"class_names": '{"a": 1, "a": 2}'})["class_names"] == '{"a": 1, "a": 2}'


def test_a_cache_entry_with_a_key_twice_is_rebuilt_not_trusted(tmp_path):
    from nhle_pipeline.pipeline.baseline_cache import BaselineCache, CachedBaseline
    from nhle_pipeline.verify.measure import ModelOutputs

    cache = BaselineCache(tmp_path)
    out = ModelOutputs(correct=np.ones(3, np.int64), total=np.ones(3, np.int64), test_idx=np.arange(2),
                       test_logits=np.zeros((2, 3), np.float32), test_features=np.zeros((2, 4), np.float32),
                       train_idx=np.arange(2), train_logits=np.zeros((2, 3), np.float32),
                       train_features=np.zeros((2, 4), np.float32), provider="cpu", copy_max_abs=0.0)
    path = cache.store("k", CachedBaseline(out, ["Gemm"]))
    assert cache.load("k") is not None
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = str(arrays["meta"])
    arrays["meta"] = np.array(meta.replace('"key": "k"', '"key": "other", "key": "k"', 1))
    np.savez(path, **arrays)
    assert cache.load("k") is None and not path.exists()


# --- 10. a full disk names the file; a full cache leaves no temp file -------------------------------


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() raises it: no file name


class _FillingFile:
    """A real file that takes 1 KiB, then says the disk is full (write() names no file)."""

    def __init__(self, path, mode="wb"):
        self.f = open(path, mode)  # noqa: SIM115
        self.name, self.mode = self.f.name, self.f.mode

    def write(self, data):
        self.f.write(data[:1024])
        _enospc()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_names_the_file_even_when_write_names_none(tmp_path, digits_weights, monkeypatch):
    """The export's write() fails without a file name (a real full disk does): the line names it."""
    import onnx

    real = onnx._save_bytes

    def full(content, f):
        if hasattr(f, "write"):
            return real(content, f)
        with _FillingFile(f) as writable:
            writable.write(content)

    monkeypatch.setattr(onnx, "_save_bytes", full)
    cfg = write_config(tmp_path / "run.yaml", digits_config(digits_weights, tmp_path / "releases"))
    r = invoke("run", cfg, "--no-cache")
    _no_crash(r)
    assert r.exit_code == 4, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no space left on the device writing '"), r.stderr
    assert lines[0].split("'")[1].endswith(".onnx"), lines[0]
    assert not (tmp_path / "releases" / "digits-test").exists()


def test_a_full_cache_disk_while_extracting_npz_names_the_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import nhle_pipeline.pipeline.image_sources as sources

    root = tmp_path / "npz"
    root.mkdir()
    np.savez_compressed(root / "train.npz", x=np.zeros((4096, 8, 8), np.uint8), y=np.arange(4096) % 10)
    monkeypatch.setattr(sources, "open", _FillingFile, raising=False)
    member = sources.NpzMember(root / "train.npz", "x", tmp_path / "cache")
    with pytest.raises(OSError) as info:
        member.array  # noqa: B018
    assert info.value.errno == errno.ENOSPC and info.value.filename.endswith(".npy")
    assert [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_a_full_cache_disk_leaves_no_temp_baseline_entry(tmp_path, monkeypatch):
    from nhle_pipeline.pipeline.baseline_cache import BaselineCache, CachedBaseline
    from nhle_pipeline.verify.measure import ModelOutputs

    out = ModelOutputs(correct=np.ones(3, np.int64), total=np.ones(3, np.int64), test_idx=np.arange(2),
                       test_logits=np.zeros((2, 3), np.float32), test_features=np.zeros((2, 4), np.float32),
                       train_idx=np.arange(2), train_logits=np.zeros((2, 3), np.float32),
                       train_features=np.zeros((2, 4), np.float32), provider="cpu", copy_max_abs=0.0)

    def half_then_full(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        _enospc()

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    cache = BaselineCache(tmp_path)
    assert cache.store("k", CachedBaseline(out, ["Gemm"])) is None  # skipped, not an error
    assert list(cache.dir.iterdir()) == []


def test_a_really_full_cache_disk(tmp_path, digits_weights):
    """cache.dir on a 64 KiB tmpfs (where this test may mount one): a compressed npz member does not
    fit; exit 4 naming the file, and nothing left in the cache."""
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root in a namespace that allows it)")
    try:
        root = tmp_path / "npz"
        root.mkdir()
        rng = np.random.default_rng(0)
        for part, n in (("train", 2000), ("test", 200)):
            np.savez_compressed(root / f"{part}.npz", x=rng.integers(0, 256, (n, 8, 8), dtype=np.uint8),
                                y=np.arange(n) % 10)
        cfg = write_config(tmp_path / "run.yaml", digits_config(
            digits_weights, tmp_path / "releases", data={"dataset": "npz", "root": str(root)},
            cache={"dir": str(small)}))
        r = invoke("run", cfg)
        _no_crash(r)
        assert r.exit_code == 4, r.output
        assert f"writing '{small}" in r.stderr, r.stderr
        assert [p for p in small.rglob("*") if p.is_file()] == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


# --- 2. a model whose logits are NaN: the gates fail closed, the NaN recorded -----------------------


class _NaNNet(nn.Module):
    """Finite weights, NaN features and logits: sqrt of a negative hidden layer."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16))
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.classifier(torch.sqrt(self.body(x) - 1.0e3))


def nan_net(num_classes: int) -> nn.Module:
    return _NaNNet(num_classes)


def test_evidence_of_non_finite_features_or_logits_is_nan_not_an_error():
    from nhle_pipeline.verify.evidence import (
        evidence_from_outputs,
        mia_efficacy,
        probe_auc,
        separability,
    )

    rng = np.random.default_rng(0)
    y = np.arange(40) % 4
    feats, logits = rng.normal(size=(40, 6)), rng.normal(size=(40, 4))
    assert np.isfinite(probe_auc(feats, y, feats, y, [0], 0)) and np.isfinite(separability(feats, y, [0])).all()
    nan_feats = feats.copy()
    nan_feats[3, 2] = np.nan
    inf_logits = logits.copy()
    inf_logits[5, 1] = np.inf
    assert np.isnan(separability(nan_feats, y, [0])).all()
    assert np.isnan(probe_auc(nan_feats, y, feats, y, [0], 0)) and np.isnan(probe_auc(feats, y, nan_feats, y, [0], 0))
    assert np.isnan(mia_efficacy(np.full_like(logits, np.nan), y, logits, y, [0], 0))
    assert np.isnan(mia_efficacy(logits, y, inf_logits, y, [0], 0))  # row 5 (class 1) is a non-member sample
    ev = evidence_from_outputs((np.full_like(logits, np.nan), nan_feats, y), (logits, nan_feats, y), [0], 0)
    assert all(np.isnan(v) for v in ev.to_dict().values())


@pytest.mark.slow
def test_a_model_with_nan_logits_fails_its_gates_with_the_nan_recorded(tmp_path):
    from nhle_pipeline.pipeline.checkpoint import save_weights

    weights = tmp_path / "nan-net.safetensors"
    save_weights(nan_net(10), weights)
    cfg = write_config(tmp_path / "run.yaml", digits_config(
        weights, tmp_path / "releases", model={"arch": "tests.test_hostile_inputs:nan_net", "trust_code": True},
        unlearn={"cwm": {"mode": "suppress"}}))
    r = invoke("run", cfg, "--no-cache")
    _no_crash(r)
    assert r.exit_code == 1, r.output
    assert "gate(s) failed" in r.stderr and "report kept in" in r.stderr, r.stderr
    assert not (tmp_path / "releases" / "digits-test").exists()
    [manifest] = (tmp_path / "releases" / ".staging").glob("*/manifest.json")
    m = json.loads(manifest.read_text())
    for who in ("original", "unlearned"):
        ev = m["metrics"]["evidence"][who]
        assert all(np.isnan(ev[k]) for k in ("ratio_d", "probe_auc", "mia_efficacy")), ev
    assert m["passed"] is False and m["status"] != "released"


# --- 3. model.num_classes claimed wider than the model ------------------------------------------------


def _forge_num_classes(rel: Path, n: int) -> None:
    """config, manifest and model metadata all say ``n`` classes; the graph still outputs 10."""
    from nhle_pipeline.export.metadata import stamp_metadata
    from nhle_pipeline.pipeline.checkpoint import sha256_file
    from nhle_pipeline.pipeline.config import parse_config
    from nhle_pipeline.verify.ort import read_metadata

    m = json.loads((rel / "manifest.json").read_text())
    meta = read_metadata(rel / "model.onnx")
    meta.pop("producer", None)
    m["config"]["model"]["num_classes"] = m["num_classes"] = n
    meta["num_classes"] = str(n)
    m["config_sha256"] = meta["config_sha256"] = parse_config(m["config"]).sha256()
    stamp_metadata(rel / "model.onnx", meta)
    shutil.copyfile(rel / "model.onnx", rel / "triton" / rel.name / "1" / "model.onnx")
    for name in m["files"]:
        m["files"][name] = {"sha256": sha256_file(rel / name), "bytes": (rel / name).stat().st_size}
    _reseal(rel, m)


@pytest.mark.slow
def test_num_classes_claimed_for_a_narrower_model_is_bad_input(shipped):
    _forge_num_classes(shipped, 12)
    _verify_refused(shipped, "model.onnx", "outputs 10 logits", "model.num_classes is 12")


# --- 4. class names are text, never markup or mathtext ------------------------------------------------

MATH_NAME = r"$\nocmd$"


def test_reports_render_class_names_literally():
    from nhle_pipeline.pipeline.release.report_html import render_html
    from nhle_pipeline.pipeline.release.report_md import render_report
    from tests.manifests import sample_manifest

    m = sample_manifest(class_names=[MATH_NAME, "a|b", "*c*"])
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    feats = {"original": (rng.normal(size=(30, 4)), y), "unlearned": (rng.normal(size=(30, 4)), y)}
    html = render_html(m, feats, created="2026-12-04 00:00:00 UTC")  # the per-class and PCA charts draw the names
    assert "$\\nocmd$" in html and "pca-chart" in html
    md = render_report(m, created="2026-12-04 00:00:00 UTC")
    assert "| 0 \\$\\\\nocmd\\$ (forgotten) |" in md and "| 1 a\\|b |" in md and "| 2 \\*c\\* |" in md
    nan_feats = {k: (np.full_like(f, np.nan), yy) for k, (f, yy) in feats.items()}
    assert "pca-chart" not in render_html(m, nan_feats, created="2026-12-04 00:00:00 UTC")  # no chart, no crash


def _digits_npz(root: Path) -> Path:
    """The digits splits as uint8 npz archives (the digits model reads them as it reads digits)."""
    from nhle_pipeline.pipeline.config import DataConfig
    from nhle_pipeline.pipeline.data import load_dataset

    ds = load_dataset(DataConfig(dataset="digits"))
    root.mkdir(parents=True, exist_ok=True)
    for part, split in (("train", ds.train), ("test", ds.test)):
        np.savez(root / f"{part}.npz", x=np.rint(split.x[:, 0] * 255).astype(np.uint8), y=split.y)
    return root


@pytest.mark.slow
def test_a_mathtext_class_name_is_drawn_literally_and_the_run_proceeds(tmp_path, digits_weights):
    names = [MATH_NAME, *(f"d{i}" for i in range(1, 10))]
    cfg = write_config(tmp_path / "run.yaml", digits_config(
        digits_weights, tmp_path / "releases",
        data={"dataset": "npz", "root": str(_digits_npz(tmp_path / "npz")), "class_names": names}))
    r = invoke("run", cfg)
    _no_crash(r)
    assert r.exit_code in (0, 1), r.output  # released, or a gate's verdict: the reports were drawn
    [report] = [*(tmp_path / "releases").glob("digits-test/report.md"), *(tmp_path / "releases").glob(".staging/*/report.md")]
    assert "| 0 \\$\\\\nocmd\\$ (forgotten) |" in report.read_text()
    assert (report.parent / "report.html").is_file()


# --- 5. data.normalize must survive float32 -------------------------------------------------------------


@pytest.mark.parametrize("normalize, expect", [
    ({"mean": [0.0], "std": [1.0e-300]}, "data.normalize.std: std[0] 1e-300 is 0.0 in float32"),
    ({"mean": [0.0], "std": [1.0e39]}, "data.normalize.std: std[0] 1e+39 is inf in float32"),
    ({"mean": [0.0], "std": [1.0e-40]}, "data.normalize.std: std[0] 1e-40 is too small"),
    ({"mean": [0.5, 0.5], "std": [0.5, 0.0]}, "data.normalize.std: std[1] 0.0: expected a positive number"),
    ({"mean": [1.0e39], "std": [1.0]}, "data.normalize.mean: mean[0] 1e+39 is not finite in float32"),
])
def test_normalize_values_that_float32_cannot_hold_are_bad_input(make_config, normalize, expect):
    bad_input(invoke("run", make_config(data={"dataset": "digits", "normalize": normalize})), expect)


# --- 6, 8. image folders: a decompression bomb first, a FIFO, a device ------------------------------------


def _bomb_png(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose header claims ``width`` x ``height`` (a few dozen bytes on disk)."""
    import struct
    import zlib

    from PIL import Image

    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    i = data.index(b"IHDR")
    data[i + 4 : i + 12] = struct.pack(">II", width, height)
    data[i + 17 : i + 21] = struct.pack(">I", zlib.crc32(bytes(data[i : i + 17])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def _image_folder(root: Path) -> Path:
    from PIL import Image

    for part in ("train", "test"):
        for c in ("a", "b"):
            (root / part / c).mkdir(parents=True)
            for k in range(3):
                Image.new("L", (8, 8), color=40 * k).save(root / part / c / f"img{k}.png")
    return root


@pytest.fixture()
def no_hang():
    """Fail, not hang, if a case blocks (a FIFO opened for reading waits for a writer)."""
    import signal

    def timeout(*_):
        raise TimeoutError("the command blocked")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _imagefolder_run(c_tmp: Path, weights: Path) -> list:
    return ["run", write_config(c_tmp / "run.yaml", digits_config(
        weights, c_tmp / "releases", data={"dataset": "imagefolder", "root": str(c_tmp / "imgs")},
        forget={"classes": [0], "samples_per_class": 2}))]


@pytest.mark.parametrize("size", [(20_000, 20_000), (10_000, 10_000)], ids=["over-2x-limit", "over-limit"])
@pytest.mark.parametrize("where", ["a/0000.png", "b/zzzz.png"], ids=["first-file", "later-file"])
def test_a_decompression_bomb_in_an_image_folder_is_bad_input(tmp_path, digits_weights, size, where):
    _image_folder(tmp_path / "imgs")
    bomb = _bomb_png(tmp_path / "imgs" / "train" / where, *size)
    argv = _imagefolder_run(tmp_path, digits_weights)
    before = snapshot(tmp_path)
    bad_input(invoke(*argv), f"{bomb}: cannot decode the image", "decompression bomb")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["a/0000.png", "b/zzzz.png"], ids=["first-file", "later-file"])
def test_a_fifo_named_png_in_an_image_folder_is_bad_input_not_a_hang(tmp_path, digits_weights, no_hang, where):
    _image_folder(tmp_path / "imgs")
    fifo = tmp_path / "imgs" / "train" / where
    os.mkfifo(fifo)
    bad_input(invoke(*_imagefolder_run(tmp_path, digits_weights)), f"{fifo}: not a regular file")


def test_decoding_refuses_a_fifo_swapped_in_after_the_scan(tmp_path, no_hang):
    from nhle_pipeline.pipeline.errors import DataError
    from nhle_pipeline.pipeline.image_sources import ImageFileSource, Preprocess

    fifo = tmp_path / "late.png"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="late.png: a pipe"):
        ImageFileSource([str(fifo)], "L", Preprocess()).decode(0)
    with pytest.raises(DataError, match="null: a device"):
        ImageFileSource(["/dev/null"], "L", Preprocess()).decode(0)


def test_class_folder_and_npz_class_names_with_control_characters_are_bad_input(tmp_path, digits_weights):
    root = _image_folder(tmp_path / "imgs")
    for part in ("train", "test"):
        (root / part / "b").rename(root / part / "b\nc")
    bad_input(invoke(*_imagefolder_run(tmp_path, digits_weights)), "class folder", "U+000A")
    npz = _digits_npz(tmp_path / "npz")
    with np.load(npz / "train.npz") as z:
        arrays = dict(z)
    np.savez(npz / "train.npz", **arrays, class_names=np.array([f"c{i}" for i in range(9)] + ["bell\x07"]))
    cfg = write_config(tmp_path / "npz.yaml", digits_config(digits_weights, tmp_path / "releases",
                                                            data={"dataset": "npz", "root": str(npz)}))
    bad_input(invoke("run", cfg), "train.npz: 'class_names'", "U+0007")


# --- 7. names: no trailing newline, no control characters -----------------------------------------------


@pytest.mark.parametrize("edit, expect", [
    ({"release": {"name": "digits\n"}}, "release.name"),
    ({"release": {"name": "digits\r"}}, "release.name"),
    ({"release": {"name": "dig\x00its"}}, "release.name"),
    ({"data": {"dataset": "digits", "class_names": [*map(str, range(9)), "9\n"]}}, "data.class_names"),
    ({"data": {"dataset": "digits", "class_names": [*map(str, range(9)), "9\u202e"]}}, "data.class_names"),
    ({"tracking": {"experiment": "exp\nname"}}, "tracking.experiment"),
    ({"tracking": {"run_name": "\x1b[31mred"}}, "tracking.run_name"),
])
def test_names_with_a_newline_or_control_character_are_bad_input(make_config, edit, expect):
    bad_input(invoke("run", make_config(**edit)), expect)


def test_a_config_file_stem_with_a_newline_is_not_a_release_name(tmp_path, digits_weights):
    cfg = digits_config(digits_weights, tmp_path / "releases")
    cfg["release"].pop("name")
    bad_input(invoke("run", write_config(tmp_path / "digits\n.yaml", cfg)), "release.name")


def test_quantize_refuses_an_out_name_with_a_trailing_newline(tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    bad_input(invoke("quantize", parent, "--mode", "fp16", "--out", tmp_path / "derived\n"), "--out")
    assert not (tmp_path / "derived\n").exists()


# --- 9. never a release inside a release or a staging folder ---------------------------------------------


def _fake_release(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    (folder / "model.onnx").write_bytes(b"a model")
    return folder


@pytest.mark.parametrize("how", ["out", "out-deeper", "release-dir", "out-in-staging", "release-dir-in-staging"])
def test_a_run_into_an_existing_release_or_a_staging_folder_is_refused_before_any_work(tmp_path, digits_weights, how):
    old = _fake_release(tmp_path / "releases" / "digits-forget-0")
    staging = tmp_path / "releases" / ".staging"
    staging.mkdir()
    inside = {"out": old, "out-deeper": old / "triton" / "x", "release-dir": old,
              "out-in-staging": staging, "release-dir-in-staging": staging / "run-1"}[how]
    cfg = digits_config(digits_weights, inside if how.startswith("release-dir") else tmp_path / "releases")
    argv = ["run", write_config(tmp_path / "run.yaml", cfg)] + (["--out", inside] if how.startswith("out") else [])
    before = snapshot(tmp_path)
    line = bad_input(invoke(*argv), "release.dir")
    assert ("staging folder" in line) if "staging" in how else (f"inside the release '{old}'" in line), line
    assert snapshot(tmp_path) == before


def test_quantize_into_another_release_is_refused(tmp_path):
    parent = _fake_release(tmp_path / "releases" / "parent")
    other = _fake_release(tmp_path / "releases" / "other")
    before = snapshot(tmp_path)
    bad_input(invoke("quantize", parent, "--mode", "fp16", "--out", other / "derived"), f"inside the release '{other}'")
    assert snapshot(tmp_path) == before


# --- 11. verify writes nothing outside its temporary folder ----------------------------------------------


@pytest.mark.slow
def test_verify_leaves_home_and_tmpdir_empty(shipped, tmp_path):
    import subprocess

    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "TORCHINDUCTOR", "TRITON_", "MPLCONFIG"))}
    env.update(HOME=str(home), TMPDIR=str(tmp), OMP_NUM_THREADS="1")
    env.pop("ORT_DISABLE_TELEMETRY", None)  # verify must turn it off itself
    r = subprocess.run([sys.executable, "-m", "nhle_pipeline.pipeline", "verify", str(shipped)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    left = sorted(p.relative_to(tmp_path).as_posix() for p in (*home.rglob("*"), *tmp.rglob("*")))
    assert left == [], left


def test_the_hermetic_environment_is_restored_and_removed(monkeypatch):
    from nhle_pipeline.pipeline.hermetic import hermetic_caches

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere")
    monkeypatch.delenv("ORT_DISABLE_TELEMETRY", raising=False)
    with hermetic_caches() as tmp:
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"].startswith(tmp) and os.environ["ORT_DISABLE_TELEMETRY"] == "1"
        Path(os.environ["MPLCONFIGDIR"]).mkdir()
    assert not Path(tmp).exists()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere" and "ORT_DISABLE_TELEMETRY" not in os.environ


# --- 12. verify checks the release itself: no link to it, no hard link in it -----------------------------


@pytest.mark.slow
def test_a_symlinked_release_folder_is_refused(shipped, tmp_path):
    link = tmp_path / "link-to-release"
    link.symlink_to(shipped, target_is_directory=True)
    for arg in (link, f"{link}/"):
        bad_input(invoke("verify", arg), f"{link}: a symbolic link")


@pytest.mark.slow
def test_a_hard_linked_model_is_refused(shipped, tmp_path):
    os.link(shipped / "model.onnx", tmp_path / "another-name.onnx")  # editable from outside the release
    _verify_refused(shipped, f"{shipped / 'model.onnx'}: has 2 hard links")


@pytest.mark.slow
def test_a_signature_bundle_naming_a_key_twice_is_refused(digits_weights, tmp_path):
    from tests.test_release_trust import _keypair

    key, pub = _keypair(tmp_path, "producer")
    cfg = write_config(tmp_path / "run.yaml", digits_config(digits_weights, tmp_path / "releases"))
    assert invoke("run", cfg, "--sign-key", key).exit_code == 0
    sig = tmp_path / "releases" / "digits-test" / "release.sig"
    good = json.loads(sig.read_text())
    assert invoke("verify", sig.parent, "--public-key", pub).exit_code == 0
    text = json.dumps(good)
    sig.write_text(text.replace('{"mediaType": ', '{"mediaType": "x", "mediaType": ', 1))
    assert text != sig.read_text()
    bad_input(invoke("verify", sig.parent, "--public-key", pub), "release.sig: not a valid signature",
              "duplicate key 'mediaType'")


def test_a_model_kwargs_integer_the_manifest_reader_would_refuse_is_refused_up_front(make_config):
    """A release must be verifiable: an integer longer than the strict reader takes never reaches a manifest."""
    bad_input(invoke("run", make_config(model={"kwargs": {"hidden": [int("9" * 150)]}})), "model.kwargs", "150 characters")
