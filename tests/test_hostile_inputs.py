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
from click.testing import CliRunner

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
